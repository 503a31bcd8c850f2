#!/usr/bin/env bash
# How much the synthetic pose benchmark's held-out OKS mAP moves with the training seed alone,
# for anvil and for sleap-nn: the same data as scripts/pose_bench.sh (240 training frames,
# seed 0; 60 held-out frames, seed 1), configs/sleap_synth_single_instance.yaml with
# trainer_config.seed = each of SEEDS, both models scored by anvil's `coordinator eval`.
# Prints one row per seed and the mean and spread per trainer.
#
#   scripts/pose_seeds.sh [WORK_DIR]      # default: /tmp/anvil-pose-seeds
# Environment: CARGO_TARGET_DIR (release binaries; built if missing), SLEAP_NN_PYTHON
# (default /var/tmp/sleapnn-venv/bin/python), SEEDS ("0 1 2 3 4"), SKIP_SLEAPNN (1: anvil only).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/anvil-pose-seeds}
PY=${SLEAP_NN_PYTHON:-/var/tmp/sleapnn-venv/bin/python}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SEEDS=${SEEDS:-0 1 2 3 4}

if [[ ! -x $BIN/worker || ! -x $BIN/coordinator ]]; then
    (cd "$ROOT" && cargo build --release -p worker -p coordinator)
fi
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$BIN/coordinator" data synth-pose --output train.pkg.slp --frames 240 --height 128 --width 128 --seed 0
"$BIN/coordinator" data synth-pose --output heldout.pkg.slp --frames 60 --height 128 --width 128 --seed 1

score() { # predictions.slp -> "mAP p50"
    "$BIN/coordinator" eval --ground-truth heldout.pkg.slp --predictions "$1" -o "$1.eval" > /dev/null
    "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]+"/metrics.json")); print(m["voc_metrics"]["oks_voc.mAP"], m["distance_metrics"]["p50"])' "$1.eval"
}

echo "seed trainer mAP dist_p50_px" > results.txt
for seed in $SEEDS; do
    sed -e "s|data/synth_pose_train.pkg.slp|$WORK/train.pkg.slp|" -e "s/^  seed: .*/  seed: $seed/" \
        "$ROOT/configs/sleap_synth_single_instance.yaml" > config_$seed.yaml
    "$BIN/worker" train --config config_$seed.yaml --run-dir anvil_$seed > anvil_$seed.log 2>&1 ||
        { tail -20 anvil_$seed.log; exit 1; }
    "$BIN/coordinator" track --model anvil_$seed --data heldout.pkg.slp --output anvil_$seed.slp > /dev/null
    echo "$seed anvil $(score anvil_$seed.slp)" | tee -a results.txt
    if [[ ${SKIP_SLEAPNN:-0} != 1 ]]; then
        "$PY" "$ROOT/scripts/pose_bench_sleapnn.py" train config_$seed.yaml sleapnn_$seed \
            sleapnn_steps_$seed.json > sleapnn_$seed.log 2>&1 || { tail -20 sleapnn_$seed.log; exit 1; }
        "$PY" "$ROOT/scripts/pose_bench_sleapnn.py" predict sleapnn_$seed heldout.pkg.slp \
            sleapnn_$seed.slp > /dev/null 2>&1
        echo "$seed sleap-nn $(score sleapnn_$seed.slp)" | tee -a results.txt
    fi
done
"$PY" - <<'PYEOF'
import statistics as st
rows = [l.split() for l in open("results.txt").read().splitlines()[1:]]
for who in ("anvil", "sleap-nn"):
    maps = [float(r[2]) for r in rows if r[1] == who]
    p50 = [float(r[3]) for r in rows if r[1] == who]
    if maps:
        sd = st.stdev(maps) if len(maps) > 1 else 0.0
        print(f"{who}: mAP mean {st.mean(maps):.3f} sd {sd:.3f} min {min(maps):.3f} "
              f"max {max(maps):.3f} over {len(maps)} seeds; dist p50 mean {st.mean(p50):.2f} px")
PYEOF
