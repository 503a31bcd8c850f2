#!/usr/bin/env python3
"""Write data/tests/fixtures/rgb.pkg.slp: a 16x12 RGB frame embedded twice by sleap-io, as PNG
(video0) and as JPEG (video1), one 2-node instance on each, and print what sleap-io reads back
(per-channel sums and two pixels), which data/tests/slp.rs hard-codes.

Run: /var/tmp/sleapnn-venv/bin/python scripts/slp_fixtures.py
"""

import pathlib
import tempfile

import imageio.v3 as iio
import numpy as np
import sleap_io as sio

OUT = pathlib.Path(__file__).resolve().parent.parent / "data/tests/fixtures/rgb.pkg.slp"


def main() -> None:
    h, w = 12, 16
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 15, yy * 20, 255 - xx * 10], axis=-1).astype(np.uint8)
    img[0, 0] = [255, 0, 0]
    with tempfile.TemporaryDirectory() as tmp:
        png, jpg = pathlib.Path(tmp) / "rgb_000.png", pathlib.Path(tmp) / "rgb_000.jpg"
        iio.imwrite(png, img)
        iio.imwrite(jpg, img, quality=95)
        skel = sio.Skeleton(["head", "tail"], edges=[("head", "tail")])
        vids = [sio.Video.from_filename([str(png)]), sio.Video.from_filename([str(jpg)])]
        pts = np.array([[2.0, 3.0], [10.0, 8.0]])
        lfs = [
            sio.LabeledFrame(video=v, frame_idx=0, instances=[sio.Instance.from_numpy(pts, skeleton=skel)])
            for v in vids
        ]
        sio.save_slp(sio.Labels(lfs, videos=vids, skeletons=[skel]), str(OUT), embed="user", verbose=False)
    labels = sio.load_slp(str(OUT))
    for v in labels.videos:
        a = v[0]
        sums = a.reshape(-1, a.shape[-1]).astype(np.int64).sum(0).tolist()
        print(v.backend.dataset, a.shape, "sums", sums, "[0,0]", a[0, 0].tolist(), "[5,7]", a[5, 7].tolist())


if __name__ == "__main__":
    main()
