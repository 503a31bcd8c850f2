#!/usr/bin/env bash
# deploy/slurm/anvil.sbatch on a real one-node Slurm cluster (scripts/slurm-local.sh), as a user
# submits it. Needs root (it starts munged, slurmctld and slurmd) and about 6 minutes, most of it
# Slurm's two-minute hold on a requeued job. scripts/test.sh runs it after the cargo tests.
#   bash scripts/slurm-test.sh
# Checks: `sbatch -n 2` with extra `--set` arguments completes; `--gpus-per-task=1` gives each
# worker task its own GPU (placeholder GPUs on this cluster) and completes when submitted as
# `-N 1 --ntasks-per-node=2`; SIGUSR1 (the time-limit warning)
# ends in a checkpoint, a requeue and a resumed run whose final parameters equal an uninterrupted
# run's; `scancel` (SIGTERM to every process) ends in a checkpoint and a clean exit; no anvil
# process is left.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d /tmp/anvil-slurm-test.XXXXXX)
cargo build --release -q -p coordinator -p worker
bin=${CARGO_TARGET_DIR:-$repo/target}/release
bash scripts/slurm-local.sh start "$work/slurm"
export SLURM_CONF=$work/slurm/slurm.conf
# Stop the cluster always; keep the job directory only when a check failed, to read its logs.
trap 'bash "$repo/scripts/slurm-local.sh" stop "$work/slurm"; [ "${passed:-}" = 1 ] && rm -rf "$work" || echo "kept $work" >&2' EXIT
mkdir -p "$work/jobs" && cd "$work/jobs"
ln -s "$repo/configs" configs && ln -s "$repo/data" data
fail() { echo "FAIL: $*" >&2; exit 1; }
submit() { ANVIL_BIN=$bin sbatch --parsable -n 2 --export=ALL "$repo/deploy/slurm/anvil.sbatch" "$@"; }
state() { scontrol show job "$1" | grep -oE 'JobState=[A-Z_]+' | cut -d= -f2; }
wait_state() { # job, wanted state regex, seconds
  for _ in $(seq "$3"); do state "$1" | grep -qE "^($2)$" && return 0; sleep 1; done
  fail "job $1 is $(state "$1"), expected $2 (log: $(tail -n 5 "anvil-$1.out"))"
}
hash_of() { grep -oE 'identical parameters \(sha256 [0-9a-f]+' "anvil-$1.out" | tail -n 1; }
# Long enough (54 steps) that a signal sent after the first checkpoint lands mid-run however
# fast training is on this machine.
quick=(configs/quickstart.yaml --set training.max_epochs=6)
# Waits until job $1 has written its first checkpoint (it is then mid-run).
wait_training() {
  for _ in $(seq 300); do grep -q 'checkpoint at step 9:' "anvil-$1.out" 2>/dev/null && return 0; sleep 1; done
  fail "job $1 wrote no first checkpoint (log: $(tail -n 5 "anvil-$1.out"))"
}

echo "1. sbatch -n 2, extra arguments passed through"
a=$(submit configs/quickstart.yaml --set training.max_epochs=1)
wait_state "$a" COMPLETED 300
grep -q 'finished after 9 steps' "anvil-$a.out" || fail "job $a did not train 1 epoch"

echo "1b. sbatch -N 1 --ntasks-per-node=2 --gpus-per-task=1: one GPU per worker task"
g=$(ANVIL_BIN=$bin sbatch --parsable -N 1 --ntasks-per-node=2 --gpus-per-task=1 --export=ALL "$repo/deploy/slurm/anvil.sbatch" \
  configs/quickstart.yaml --set training.max_epochs=1)
wait_state "$g" COMPLETED 300
grep -q 'finished after 9 steps' "anvil-$g.out" || fail "job $g did not train 1 epoch"
scontrol show job "$g" | grep -q 'TresPerTask=gres:gpu:1' || fail "job $g did not ask one GPU per task"

echo "2. SIGUSR1: checkpoint, requeue, resume; same parameters as an uninterrupted run"
u=$(submit "${quick[@]}")
wait_training "$u"
scancel --batch --signal=USR1 "$u"
for _ in $(seq 120); do grep -q 'requeueing job' "anvil-$u.out" && break; sleep 1; done
grep -q 'requeueing job' "anvil-$u.out" || fail "job $u was not requeued"
ref=$(ANVIL_PORT=50052 submit "${quick[@]}")
wait_state "$ref" COMPLETED 400
wait_state "$u" COMPLETED 400
grep -q 'resuming runs/slurm-' "anvil-$u.out" || fail "job $u did not resume"
[ -n "$(hash_of "$u")" ] && [ "$(hash_of "$u")" = "$(hash_of "$ref")" ] ||
  fail "resumed run $(hash_of "$u") differs from uninterrupted $(hash_of "$ref")"

echo "3. scancel (SIGTERM): checkpoint and clean exit"
c=$(submit "${quick[@]}")
wait_training "$c"
scancel "$c"
wait_state "$c" CANCELLED 120
sleep 5
grep -q '"status": *"preempted"' "runs/slurm-$c/run.json" || fail "job $c wrote no checkpoint"
[ -d "runs/slurm-$c/checkpoints/last" ] || fail "job $c has no last checkpoint"

if pgrep -f "$bin/(coordinator|worker)" >/dev/null; then fail "anvil processes left running"; fi
passed=1
echo "slurm: 4 passed, 0 failed"
