#!/usr/bin/env bash
# Overfitting the bundled minimal_instance.pkg.slp (one frame, two animals, two nodes) with
# `use_same_data_for_val: true`, as a check that training, prediction and evaluation agree:
# single_instance on two workers, then top-down (centroid + centered_instance), each tracked
# and scored with `coordinator eval`. Prints the mean keypoint error and mAP of each.
#
#   bash scripts/pose_overfit.sh [OUT_DIR]    (release binaries from `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/pose_overfit}
BIN=${CARGO_TARGET_DIR:-target}/release
rm -rf "$OUT"
mkdir -p "$OUT"
LABELS=data/minimal_instance.pkg.slp
# No augmentation, a smaller UNet (8 filters) and a higher learning rate: the point is to fit.
COMMON=(--set data_config.use_augmentations_train=false --set trainer_config.optimizer.lr=0.001
        --set model_config.backbone_config.unet.filters=8 --set trainer_config.early_stopping=null
        --set trainer_config.min_train_steps_per_epoch=25)

score() { # name predictions
    "$BIN/coordinator" eval --ground-truth "$LABELS" --predictions "$2" -o "$OUT/eval_$1" >/dev/null
    python3 - "$OUT/eval_$1/metrics.json" "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: {len(m['distance_metrics']['dists'])} instances matched; mean error {m['distance_metrics']['avg']:.2f} px, p90 {m['distance_metrics']['p90']:.2f} px; "
      f"OKS mAP {m['voc_metrics']['oks_voc.mAP']:.3f}, mOKS {m['mOKS']['mOKS']:.3f}")
PY
}

time "$BIN/coordinator" launch --nodes 2 --config configs/sleap_single_instance.yaml \
    --run-dir "$OUT/single" "${COMMON[@]}" --set trainer_config.max_epochs=12 2>&1 | tail -2
"$BIN/coordinator" track --model "$OUT/single" --data "$LABELS" --output "$OUT/single.slp" 2>&1 | tail -1
score single_instance "$OUT/single.slp"

time "$BIN/coordinator" launch --nodes 2 --config configs/sleap_centroid.yaml \
    --run-dir "$OUT/centroid" "${COMMON[@]}" --set trainer_config.max_epochs=6 2>&1 | tail -2
time "$BIN/coordinator" launch --nodes 2 --config configs/sleap_centered_instance.yaml \
    --run-dir "$OUT/centered" "${COMMON[@]}" --set trainer_config.max_epochs=20 \
    --set trainer_config.train_data_loader.batch_size=1 2>&1 | tail -2
"$BIN/coordinator" track --model "$OUT/centroid" --model "$OUT/centered" --data "$LABELS" \
    --output "$OUT/topdown.slp" 2>&1 | tail -1
score top_down "$OUT/topdown.slp"
