#!/usr/bin/env python3
"""Check that sleap-io opens the synthetic labels `coordinator data synth-pose` writes.

Generates a small file with the release coordinator, loads it with `sio.load_slp`, and checks
the skeleton (head -> body -> tail), the embedded video (shape, frame count), that every frame
decodes to the requested size, and that each keypoint lies on a bright shape (the animal)
rather than on the darker background. Exits non-zero on the first mismatch.

Run (from the repository root, with sleap-io installed and the coordinator built):
    python scripts/check_synth_pose.py [COORDINATOR_BINARY]
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import sleap_io as sio

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    coordinator = sys.argv[1] if len(sys.argv) > 1 else str(target / "release/coordinator")
    frames, height, width = 25, 96, 112
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "synth.pkg.slp"
        subprocess.run(
            [coordinator, "data", "synth-pose", "--output", str(path), "--frames", str(frames),
             "--height", str(height), "--width", str(width), "--seed", "5"],
            check=True,
        )
        labels = sio.load_slp(str(path))
        skel = labels.skeletons[0]
        assert skel.node_names == ["head", "body", "tail"], skel.node_names
        assert skel.edge_inds == [(0, 1), (1, 2)], skel.edge_inds
        assert len(labels.videos) == 1 and len(labels) == frames, labels
        video = labels.videos[0]
        assert video.shape == (frames, height, width, 1), video.shape
        for lf in labels:
            image = lf.image
            assert image.shape == (height, width, 1), image.shape
            assert len(lf.user_instances) == 1
            pts = lf.user_instances[0].numpy()
            background = float(image.mean())
            for (x, y), name in zip(pts, skel.node_names):
                value = float(image[int(round(y)), int(round(x)), 0])
                assert value > background + 40, (lf.frame_idx, name, value, background)
    print(f"ok: sleap-io {sio.__version__} opens synthetic labels ({frames} frames, "
          f"{height}x{width}) with their embedded images")


if __name__ == "__main__":
    main()
