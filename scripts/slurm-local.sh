#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing deploy/slurm/anvil.sbatch for real.
#   bash scripts/slurm-local.sh start DIR   # installs slurm-wlm + munge if missing, starts daemons
#   bash scripts/slurm-local.sh stop DIR
# Then `export SLURM_CONF=DIR/slurm.conf` for sbatch/squeue/scontrol. Needs root.
set -euo pipefail
cmd=${1:?start|stop}
dir=$(realpath -m "${2:?state directory}")

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi

need=()
for pkg in slurm-wlm munge; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# munge: a key, and the daemon as the munge user (it refuses to run as root with Debian's
# directory ownership).
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi

stop
rm -rf "$dir/state" "$dir/spool"
mkdir -p "$dir/state" "$dir/spool"
cpus=$(nproc)
cat > "$dir/slurm.conf" <<CONF
ClusterName=anvil-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
KillWait=30
# Two GPUs in name only (placeholder device nodes, nothing behind them), so that GPU submit
# shapes (--gpus-per-task) can be scheduled and tested on a machine without GPUs.
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
for i in 0 1; do [ -e "$dir/fake-gpu$i" ] || mknod "$dir/fake-gpu$i" c 1 3; done
cat > "$dir/gres.conf" <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=$dir/fake-gpu[0-1]
CONF
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld
/usr/sbin/slurmd -N localhost
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "slurm up: SLURM_CONF=$dir/slurm.conf"
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo >&2 || true
exit 1
