"""Parity fixtures for anvil's peak finding and instance crops (data::pose::peaks).

Builds deterministic confidence maps (Gaussian blobs at sub-pixel positions, a channel all
below threshold, ties, flat tops, blobs at the border, several local peaks) and images,
runs sleap-nn's own find_global_peaks, find_local_peaks, make_centered_bboxes +
crop_bboxes and find_instance_crop_size, and writes inputs and outputs to
data/tests/fixtures/pose_peaks/reference.json, which data/tests/pose_peaks.rs replays.

Run with the sleap-nn environment:
    /var/tmp/sleapnn-venv/bin/python scripts/pose_peaks_reference.py
"""

import json
import math
from pathlib import Path

import numpy as np
import sleap_io as sio
import sleap_nn
import torch
from sleap_nn.data.instance_cropping import find_instance_crop_size
from sleap_nn.inference.peak_finding import (
    crop_bboxes,
    find_global_peaks,
    find_local_peaks,
)
from sleap_nn.data.instance_cropping import make_centered_bboxes

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data/tests/fixtures/pose_peaks/reference.json"
SLP = ROOT.parent / "shared/data/minimal_instance.pkg.slp"


def num(v):
    """A float for JSON, NaN as null."""
    v = float(v)
    return None if math.isnan(v) else v


def blob(h, w, x, y, sigma, amp=1.0):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def global_maps():
    h, w = 24, 32
    maps = np.zeros((6, h, w), dtype=np.float64)
    maps[0] = blob(h, w, 10.3, 7.8, 1.5)
    maps[1] = blob(h, w, 0.4, 22.7, 1.0)  # left / bottom border
    maps[2] = blob(h, w, 16.0, 12.0, 2.0, amp=0.15)  # all below threshold
    maps[3][2, 25] = 0.9  # tie: first row is 2, first column is 6
    maps[3][9, 6] = 0.9
    maps[4] = blob(h, w, 31.2, 0.1, 0.8)  # top-right corner
    maps[5] = blob(h, w, 5.6, 14.45, 1.2, amp=0.7) + blob(h, w, 20.0, 5.0, 1.0, 0.4)
    return maps.astype(np.float32)


def local_map():
    h, w = 28, 36
    m = blob(h, w, 6.3, 5.7, 1.2)
    m = np.maximum(m, blob(h, w, 20.8, 8.1, 1.0, 0.8))
    m = np.maximum(m, blob(h, w, 0.2, 26.6, 1.0, 0.6))  # bottom-left corner
    m = np.maximum(m, blob(h, w, 35.0, 14.4, 1.1, 0.9))  # right border
    m = np.maximum(m, blob(h, w, 12.0, 20.0, 1.0, 0.15))  # below threshold
    m = m.astype(np.float32)
    # Flat tops: two cells in a row, an L of three, a 2x2 block, a 3-wide (no peak),
    # and a pair next to a higher cell (no peak).
    m[14, 4:6] = 0.5
    m[18, 26] = m[19, 25] = m[19, 26] = 0.55
    m[23:25, 14:16] = 0.45
    m[2, 28:31] = 0.35
    m[25, 30:32] = 0.3
    m[25, 32] = 0.31
    return m


def refinements():
    return [(None, 5), ("integral", 5), ("integral", 4), ("integral", 3), ("local", 5)]


def global_cases():
    maps = global_maps()
    c, h, w = maps.shape
    cases = []
    for threshold in (0.2, 0.0):
        for refinement, patch in refinements():
            pts, vals = find_global_peaks(
                torch.from_numpy(maps)[None],
                threshold=threshold,
                refinement=refinement,
                integral_patch_size=patch,
            )
            cases.append(
                {
                    "threshold": threshold,
                    "refinement": refinement or "none",
                    "patch": patch,
                    "points": [[num(p[0]), num(p[1])] for p in pts[0].tolist()],
                    "scores": [num(v) for v in vals[0].tolist()],
                }
            )
    return {
        "channels": c,
        "height": h,
        "width": w,
        "maps": [float(v) for v in maps.reshape(-1)],
        "cases": cases,
    }


def local_cases():
    m = local_map()
    h, w = m.shape
    cases = []
    for threshold in (0.2, 0.32):
        for refinement, patch in refinements():
            pts, vals, samples, channels = find_local_peaks(
                torch.from_numpy(m)[None, None],
                threshold=threshold,
                refinement=refinement,
                integral_patch_size=patch,
            )
            assert (samples == 0).all() and (channels == 0).all()
            cases.append(
                {
                    "threshold": threshold,
                    "refinement": refinement or "none",
                    "patch": patch,
                    "points": [[num(p[0]), num(p[1])] for p in pts.tolist()],
                    "scores": [num(v) for v in vals.tolist()],
                }
            )
    return {
        "height": h,
        "width": w,
        "map": [float(v) for v in m.reshape(-1)],
        "cases": cases,
    }


def crop_cases():
    rng = np.random.default_rng(7)
    c, h, w = 3, 20, 24
    image = rng.uniform(0.0, 1.0, size=(c, h, w)).astype(np.float32)
    cases = []
    centres = [(10.0, 10.0), (3.3, 17.8), (-0.4, 5.6), (23.7, 19.2), (12.5, 0.5)]
    for size in (8, 7, 16):
        for cx, cy in centres:
            centroid = torch.tensor([[cx, cy]], dtype=torch.float32)
            bboxes = make_centered_bboxes(centroid, size, size)
            crop = crop_bboxes(
                torch.from_numpy(image)[None], bboxes, [0], crop_size=(size, size)
            )
            cases.append(
                {
                    "centre": [cx, cy],
                    "crop_size": size,
                    "origin": [float(v) for v in bboxes[0, 0].tolist()],
                    "crop": [float(v) for v in crop[0].reshape(-1).tolist()],
                }
            )
    return {
        "channels": c,
        "height": h,
        "width": w,
        "image": [float(v) for v in image.reshape(-1)],
        "cases": cases,
    }


def crop_size_cases():
    labels = sio.load_slp(str(SLP))
    instances = [
        [[num(v) for v in p] for p in inst.numpy().tolist()]
        for lf in labels
        for inst in lf.instances
    ]
    cases = []
    for padding, stride, min_crop, anchor in [
        (0, 2, None, None),
        (16, 16, None, None),
        (0, 32, 100, None),
        (4, 8, None, 0),
        (4, 8, None, 1),
    ]:
        size = find_instance_crop_size(
            labels,
            padding=padding,
            maximum_stride=stride,
            min_crop_size=min_crop,
            anchor_ind=anchor,
        )
        cases.append(
            {
                "padding": padding,
                "max_stride": stride,
                "min_crop_size": min_crop,
                "anchor": anchor,
                "crop_size": size,
            }
        )
    return {"instances": instances, "cases": cases}


def main():
    out = {
        "sleap_nn": sleap_nn.__version__,
        "global": global_cases(),
        "local": local_cases(),
        "crops": crop_cases(),
        "crop_size": crop_size_cases(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
