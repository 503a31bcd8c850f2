#!/usr/bin/env python3
"""Check that sleap-io opens a labels file anvil wrote (data::pose::slp::write_labels).

Writes predictions derived from SOURCE with anvil's `slp_predictions` example (see
data/examples/slp_predictions.rs for what it adds), loads them with `sio.load_slp` and
compares skeleton, video, tracks, user instances, predicted points and scores with what
sleap-io reads from SOURCE. Exits non-zero on the first mismatch.

Run (from the repository root, with sleap-io installed):
    python scripts/check_slp_written.py [SOURCE.slp]   # default: ../shared/data/minimal_instance.pkg.slp
"""

import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import sleap_io as sio

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    source = pathlib.Path(
        sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared/data/minimal_instance.pkg.slp"
    ).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "predictions.slp"
        subprocess.run(
            ["cargo", "run", "-q", "-p", "data", "--example", "slp_predictions", "--", str(source), str(out)],
            cwd=ROOT,
            check=True,
        )
        check(source, out)
    print(f"ok: sleap-io {sio.__version__} opens anvil's predictions for {source}")


def check(source: pathlib.Path, out: pathlib.Path) -> None:
    src = sio.load_slp(str(source))
    got = sio.load_slp(str(out))

    assert [s.node_names for s in got.skeletons] == [s.node_names for s in src.skeletons]
    assert [s.edge_inds for s in got.skeletons] == [s.edge_inds for s in src.skeletons]
    assert [s.symmetry_inds for s in got.skeletons] == [s.symmetry_inds for s in src.skeletons]
    assert [t.name for t in got.tracks] == ["track_0", "track_1"], got.tracks

    assert len(got.videos) == len(src.videos)
    for gv, sv in zip(got.videos, src.videos):
        # Embedded frames are referred to in the source file: the same images come back.
        assert gv.exists(), f"video {gv.filename} does not open"
        lf = next(lf for lf in src if lf.video is sv)
        assert np.array_equal(gv[lf.frame_idx], sv[lf.frame_idx]), "frames differ"

    assert len(got.labeled_frames) == len(src.labeled_frames)
    for glf, slf in zip(got, src):
        assert glf.frame_idx == slf.frame_idx
        assert got.videos.index(glf.video) == src.videos.index(slf.video)
        users = [i for i in slf.instances if type(i) is sio.Instance]
        g_users = [i for i in glf.instances if type(i) is sio.Instance]
        preds = [i for i in glf.instances if type(i) is sio.PredictedInstance]
        assert len(g_users) == len(users) and len(preds) == len(users)
        for k, (u, gu, p) in enumerate(zip(users, g_users, preds)):
            np.testing.assert_array_equal(gu.numpy(), u.numpy())
            want = u.numpy() + 0.5
            want[-1] = np.nan
            np.testing.assert_allclose(p.numpy(), want)
            n = len(u.skeleton.nodes)
            scores = p.numpy(scores=True)[:, 2]
            np.testing.assert_allclose(scores, 0.9 - 0.1 * np.arange(n))
            np.testing.assert_allclose(p.score, 0.8 - 0.1 * k, rtol=1e-6)
            assert p.track.name == f"track_{k % 2}"
            np.testing.assert_allclose(p.tracking_score, 0.5)


if __name__ == "__main__":
    main()
