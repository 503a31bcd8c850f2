#!/usr/bin/env bash
# Pose benchmark: single_instance on synthetic frames, anvil against sleap-nn (CPU), same
# config, same labels file, same run. Generates training frames (seed 0) and held-out frames
# (seed 1) with `coordinator data synth-pose`, trains configs/sleap_synth_single_instance.yaml
# with `worker train` and with sleap-nn's ModelTrainer, predicts the held-out frames with each
# model (`coordinator track`, sleap-nn's run_inference), scores both predictions with anvil's
# `coordinator eval` AND sleap-nn's Evaluator, and prints steps/s, peak RSS (/usr/bin/time -v)
# and OKS mAP side by side. steps/s two ways, both without the first STEADY_SKIP steps: the mean
# over all steps, and 1 / the median step time, which a shared machine's bursts of load (other
# jobs taking the cores for a while) move much less than the mean.
#
#   scripts/pose_bench.sh [WORK_DIR]      # default: /tmp/anvil-pose-bench
# Environment: CARGO_TARGET_DIR (release binaries; built if missing), SLEAP_NN_PYTHON
# (default /var/tmp/sleapnn-venv/bin/python), FRAMES (240), HELD_OUT (60), SIDE (128),
# EPOCHS (the config's), STEADY_SKIP (5).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/anvil-pose-bench}
PY=${SLEAP_NN_PYTHON:-/var/tmp/sleapnn-venv/bin/python}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
FRAMES=${FRAMES:-240}
HELD_OUT=${HELD_OUT:-60}
SIDE=${SIDE:-128}
STEADY_SKIP=${STEADY_SKIP:-5}
BIN=$TARGET/release

if [[ ! -x $BIN/worker || ! -x $BIN/coordinator ]]; then
    (cd "$ROOT" && cargo build --release -p worker -p coordinator)
fi
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

echo "== data: $FRAMES training frames (seed 0), $HELD_OUT held-out frames (seed 1), ${SIDE}x${SIDE}"
"$BIN/coordinator" data synth-pose --output train.pkg.slp --frames "$FRAMES" \
    --height "$SIDE" --width "$SIDE" --seed 0
"$BIN/coordinator" data synth-pose --output heldout.pkg.slp --frames "$HELD_OUT" \
    --height "$SIDE" --width "$SIDE" --seed 1
sed "s|data/synth_pose_train.pkg.slp|$WORK/train.pkg.slp|" \
    "$ROOT/configs/sleap_synth_single_instance.yaml" > config.yaml
if [[ -n ${EPOCHS:-} ]]; then
    sed -i "s/^  max_epochs: .*/  max_epochs: $EPOCHS/" config.yaml
fi

echo "== anvil: worker train"
/usr/bin/time -v -o anvil.time "$BIN/worker" train --config config.yaml --run-dir anvil_run \
    > anvil_train.log 2>&1 || { tail -20 anvil_train.log; exit 1; }
tail -2 anvil_train.log
echo "== sleap-nn: ModelTrainer (CPU)"
/usr/bin/time -v -o sleapnn.time "$PY" "$ROOT/scripts/pose_bench_sleapnn.py" train config.yaml \
    sleapnn_run sleapnn_steps.json > sleapnn_train.log 2>&1 || { tail -20 sleapnn_train.log; exit 1; }

echo "== predict held-out frames"
"$BIN/coordinator" track --model anvil_run --data heldout.pkg.slp --output anvil_pred.slp \
    > anvil_track.log 2>&1 || { tail -20 anvil_track.log; exit 1; }
"$PY" "$ROOT/scripts/pose_bench_sleapnn.py" predict sleapnn_run heldout.pkg.slp sleapnn_pred.slp \
    > sleapnn_track.log 2>&1 || { tail -20 sleapnn_track.log; exit 1; }

echo "== evaluate (anvil's coordinator eval and sleap-nn's Evaluator, on both predictions)"
for who in anvil sleapnn; do
    "$BIN/coordinator" eval --ground-truth heldout.pkg.slp --predictions ${who}_pred.slp \
        -o eval_anvil_$who > eval_anvil_$who.log 2>&1 || { tail -20 eval_anvil_$who.log; exit 1; }
    "$PY" "$ROOT/scripts/pose_bench_sleapnn.py" eval heldout.pkg.slp ${who}_pred.slp \
        eval_sleapnn_$who.json > eval_sleapnn_$who.log 2>&1 || { tail -20 eval_sleapnn_$who.log; exit 1; }
done

"$PY" - "$STEADY_SKIP" <<'PYEOF'
import csv, glob, json, re, sys

skip = int(sys.argv[1])


def peak_rss_mib(path):
    text = open(path).read()
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return kb / 1024, secs


rows = list(csv.DictReader(open(glob.glob("anvil_run/version_*/metrics.csv")[0])))
anvil_steps = [
    (int(r["epoch"]), float(r["train/step_time_ms"]) / 1e3)
    for r in rows
    if r.get("train/step_time_ms")
]
sn = json.load(open("sleapnn_steps.json"))
sn_steps = [(int(e), float(t)) for e, t in sn["steps"]]


def steady(steps):
    # Leave out the first steps of the first epoch (allocation, caches, lazy init).
    kept = sorted(t for i, (e, t) in enumerate(steps) if i >= skip)
    median = kept[len(kept) // 2]
    return len(kept) / sum(kept), 1.0 / median, len(steps)


def anvil_map(who):
    m = json.load(open(f"eval_anvil_{who}/metrics.json"))
    return m["voc_metrics"]["oks_voc.mAP"], m["distance_metrics"]["p50"]


def sleapnn_map(who):
    m = json.load(open(f"eval_sleapnn_{who}.json"))
    return m["oks_voc.mAP"], m["dist.p50"]


table = []
for who, label, steps, time_file in [
    ("anvil", "anvil (worker train)", anvil_steps, "anvil.time"),
    ("sleapnn", "sleap-nn (CPU)", sn_steps, "sleapnn.time"),
]:
    mean_sps, median_sps, n = steady(steps)
    rss, wall = peak_rss_mib(time_file)
    a_map, a_p50 = anvil_map(who)
    s_map, s_p50 = sleapnn_map(who)
    table.append((label, n, mean_sps, median_sps, wall, rss, a_map, s_map, s_p50))

print()
print("| trainer | steps | steps/s (mean) | steps/s (median step) | train wall s | peak RSS MiB | "
      "mAP (anvil eval) | mAP (sleap-nn eval) | dist p50 px |")
print("|---|---|---|---|---|---|---|---|---|")
for label, n, mean_sps, median_sps, wall, rss, a_map, s_map, p50 in table:
    print(f"| {label} | {n} | {mean_sps:.2f} | {median_sps:.2f} | {wall:.0f} | {rss:.0f} | "
          f"{a_map:.3f} | {s_map:.3f} | {p50:.2f} |")
print()
print(f"anvil / sleap-nn steps/s: {table[0][2] / table[1][2]:.2f}x (mean), "
      f"{table[0][3] / table[1][3]:.2f}x (median step); "
      f"mAP anvil {table[0][7]:.3f} vs sleap-nn {table[1][7]:.3f} (sleap-nn's evaluator)")
PYEOF
