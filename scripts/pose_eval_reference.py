"""Parity fixtures for anvil's pose evaluation (data::pose::eval).

Builds a few deterministic synthetic ground-truth / prediction pairs with sleap-io objects,
runs sleap-nn's Evaluator on each and writes the labels and the metrics to
data/tests/fixtures/pose_eval/reference.json, which data/tests/pose_eval.rs replays.

Run with the sleap-nn environment:
    /var/tmp/sleapnn-venv/bin/python scripts/pose_eval_reference.py
"""

import json
import math
from pathlib import Path

import numpy as np
import sleap_io as sio
import sleap_nn
from sleap_nn.evaluation import Evaluator, _metrics_to_json_safe, _prune_json_bloat

OUT = (
    Path(__file__).resolve().parent.parent
    / "data/tests/fixtures/pose_eval/reference.json"
)

NAN = float("nan")


def jitter(rng, points, sigma):
    """Offsets a (n_nodes, 2) array by rounded gaussian noise (NaN stays NaN)."""
    return np.round(points + rng.normal(0.0, sigma, size=points.shape), 3)


def base_pose(rng, n_nodes, centre, spread=20.0):
    return np.round(centre + rng.uniform(-spread, spread, size=(n_nodes, 2)), 3)


def mixed_case(rng):
    """Two videos, 3 nodes: missing points, extra and missing predictions, a frame
    without prediction, a predicted instance in the ground truth, a one-visible-node
    (degenerate) instance, an all-NaN user instance, a prediction-only video, score
    ties and poor predictions that land under the OKS thresholds."""
    n = 3
    gt_frames, pr_frames = [], []
    for video in (0, 1):
        for frame_idx in (0, 3, 7, 10):
            gts = []
            for k in range(2):
                pts = base_pose(rng, n, np.array([60.0 + 120 * k, 80.0 + 40 * video]))
                gts.append(pts)
            gt_insts = [{"points": p, "kind": "user"} for p in gts]
            preds = []
            for k, p in enumerate(gts):
                sigma = [0.2, 0.6, 1.5, 6.0][(frame_idx + k + video) % 4]
                q = jitter(rng, p, sigma)
                preds.append({"points": q, "kind": "predicted", "score": 0.5 + 0.125 * k})
            if video == 0 and frame_idx == 0:
                # Missing GT node and a missing predicted node elsewhere.
                gt_insts[0]["points"][1] = NAN
                preds[1]["points"][2] = NAN
            if video == 0 and frame_idx == 3:
                # An extra prediction (false positive) and a missing one (false negative).
                preds.append(
                    {
                        "points": base_pose(rng, n, np.array([300.0, 300.0])),
                        "kind": "predicted",
                        "score": 0.9,
                    }
                )
                preds = [preds[0], preds[2]]
            if video == 0 and frame_idx == 7:
                # A predicted instance stored in the ground truth (dropped by the
                # user-instance filter) and tied scores.
                gt_insts.append(
                    {"points": base_pose(rng, n, np.array([200.0, 200.0])),
                     "kind": "predicted", "score": 0.3}
                )
                for p in preds:
                    p["score"] = 0.75
            if video == 0 and frame_idx == 10:
                # Only one visible node: a zero-area bbox, matched by pixel distance.
                gt_insts[1]["points"][0] = NAN
                gt_insts[1]["points"][2] = NAN
            if video == 1 and frame_idx == 0:
                # An all-NaN user instance.
                gt_insts.append({"points": np.full((n, 2), NAN), "kind": "user"})
            if video == 1 and frame_idx == 7:
                # A node missing on both sides (a visibility true negative).
                gt_insts[0]["points"][2] = NAN
                preds[0]["points"][2] = NAN
            if video == 1 and frame_idx == 3:
                # No predicted points on node 0 for either instance.
                for p in preds:
                    p["points"][0] = NAN
            gt_frames.append({"video": video, "frame_idx": frame_idx, "instances": gt_insts})
            if video == 1 and frame_idx == 10:
                continue  # a frame without prediction
            pr_frames.append({"video": video, "frame_idx": frame_idx, "instances": preds})
    # A ground-truth frame holding only predicted instances (dropped as a whole).
    gt_frames.append(
        {"video": 1, "frame_idx": 20, "instances": [
            {"points": base_pose(rng, n, np.array([100.0, 100.0])), "kind": "predicted",
             "score": 0.4}]}
    )
    pr_frames.append(
        {"video": 1, "frame_idx": 20, "instances": [
            {"points": base_pose(rng, n, np.array([100.0, 100.0])), "kind": "predicted",
             "score": 0.4}]}
    )
    # A prediction frame with no ground truth.
    pr_frames.append(
        {"video": 0, "frame_idx": 50, "instances": [
            {"points": base_pose(rng, n, np.array([100.0, 100.0])), "kind": "predicted",
             "score": 0.8}]}
    )
    # A prediction frame with no predicted instance at all.
    gt_frames.append(
        {"video": 0, "frame_idx": 60, "instances": [
            {"points": base_pose(rng, n, np.array([100.0, 100.0])), "kind": "user"}]}
    )
    pr_frames.append({"video": 0, "frame_idx": 60, "instances": []})
    skeleton = {"name": "mouse", "nodes": ["head", "thorax", "tail"], "edges": [[0, 1], [1, 2]]}
    gt = {
        "skeleton": skeleton,
        "videos": ["/data/session1/cam0.mp4", "/data/session2/cam0.mp4"],
        "frames": gt_frames,
    }
    # Predictions name the videos by other directories (matched by leaf path) and
    # list them in the other order, plus a video the ground truth lacks.
    remap = {0: 1, 1: 0}
    for f in pr_frames:
        f["video"] = remap[f["video"]]
    pr_frames.append(
        {"video": 2, "frame_idx": 0, "instances": [
            {"points": base_pose(rng, n, np.array([60.0, 80.0])), "kind": "predicted",
             "score": 0.99}]}
    )
    pr = {
        "skeleton": skeleton,
        "videos": ["/preds/session2/cam0.mp4", "/preds/session1/cam0.mp4", "/preds/other.mp4"],
        "frames": pr_frames,
    }
    return gt, pr


def two_node_case(rng):
    """Two nodes, one video, three instances per frame: crowded frames where greedy
    matching by score decides the pairs."""
    n = 2
    gt_frames, pr_frames = [], []
    for frame_idx in range(6):
        gt_insts, preds = [], []
        for k in range(3):
            p = base_pose(rng, n, np.array([50.0 + 25 * k, 50.0]), spread=10.0)
            gt_insts.append({"points": p, "kind": "user"})
            q = jitter(rng, p, [0.3, 1.0, 3.0][(k + frame_idx) % 3])
            preds.append({"points": q, "kind": "predicted",
                          "score": [0.25, 0.625, 0.875][(k * 2 + frame_idx) % 3]})
        if frame_idx == 2:
            preds = preds[:1]
        if frame_idx == 4:
            gt_insts[2]["points"][1] = NAN
        gt_frames.append({"video": 0, "frame_idx": frame_idx, "instances": gt_insts})
        pr_frames.append({"video": 0, "frame_idx": frame_idx, "instances": preds})
    skeleton = {"name": "fly", "nodes": ["head", "tail"], "edges": [[0, 1]]}
    gt = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": gt_frames}
    pr = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": pr_frames}
    return gt, pr


def no_match_case(rng):
    """Every prediction far from every ground-truth instance: zero matched pairs."""
    n = 2
    gt_frames, pr_frames = [], []
    for frame_idx in range(2):
        gt_frames.append({"video": 0, "frame_idx": frame_idx, "instances": [
            {"points": base_pose(rng, n, np.array([50.0, 50.0])), "kind": "user"}]})
        pr_frames.append({"video": 0, "frame_idx": frame_idx, "instances": [
            {"points": base_pose(rng, n, np.array([350.0, 350.0])), "kind": "predicted",
             "score": 0.5}]})
    skeleton = {"name": "fly", "nodes": ["head", "tail"], "edges": [[0, 1]]}
    gt = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": gt_frames}
    pr = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": pr_frames}
    return gt, pr


def empty_frame_case(rng):
    """A ground-truth frame with no instances at all next to a normal one: dropped by the
    user-instance filter; without it sleap-nn fails on the empty frame."""
    n = 2
    p = base_pose(rng, n, np.array([50.0, 50.0]))
    gt_frames = [
        {"video": 0, "frame_idx": 0, "instances": [{"points": p, "kind": "user"}]},
        {"video": 0, "frame_idx": 1, "instances": []},
    ]
    pr_frames = [
        {"video": 0, "frame_idx": f, "instances": [
            {"points": jitter(rng, p, 0.5), "kind": "predicted", "score": 0.5}]}
        for f in (0, 1)
    ]
    skeleton = {"name": "fly", "nodes": ["head", "tail"], "edges": [[0, 1]]}
    gt = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": gt_frames}
    pr = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": pr_frames}
    return gt, pr


def user_in_predictions_case(rng):
    """A prediction frame that lists a user instance before a predicted one. sleap-nn ranks
    the predicted scores but indexes the whole instance list with those ranks, so the user
    instance gets matched, and scoring it then fails (it has no score)."""
    n = 2
    p = base_pose(rng, n, np.array([50.0, 50.0]))
    gt_frames = [{"video": 0, "frame_idx": 0, "instances": [{"points": p, "kind": "user"}]}]
    pr_frames = [{"video": 0, "frame_idx": 0, "instances": [
        {"points": jitter(rng, p, 0.5), "kind": "user"},
        {"points": base_pose(rng, n, np.array([300.0, 300.0])), "kind": "predicted",
         "score": 0.5}]}]
    skeleton = {"name": "fly", "nodes": ["head", "tail"], "edges": [[0, 1]]}
    gt = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": gt_frames}
    pr = {"skeleton": skeleton, "videos": ["clip.mp4"], "frames": pr_frames}
    return gt, pr


def to_sio(desc):
    skel = sio.Skeleton(
        nodes=list(desc["skeleton"]["nodes"]),
        edges=[tuple(e) for e in desc["skeleton"]["edges"]],
        name=desc["skeleton"]["name"],
    )
    videos = [sio.Video(filename=f, open_backend=False) for f in desc["videos"]]
    frames = []
    for f in desc["frames"]:
        insts = []
        for i in f["instances"]:
            pts = np.asarray(i["points"], dtype=np.float64)
            if i["kind"] == "user":
                insts.append(sio.Instance.from_numpy(pts, skeleton=skel))
            else:
                insts.append(
                    sio.PredictedInstance.from_numpy(
                        pts,
                        skeleton=skel,
                        point_scores=np.where(np.isnan(pts[:, 0]), 0.0, 0.9),
                        score=i["score"],
                    )
                )
        frames.append(
            sio.LabeledFrame(video=videos[f["video"]], frame_idx=f["frame_idx"], instances=insts)
        )
    return sio.Labels(labeled_frames=frames, videos=videos, skeletons=[skel])


def to_json_labels(desc):
    """The fixture's labels: points as [x, y] or null for a missing node."""
    frames = []
    for f in desc["frames"]:
        insts = []
        for i in f["instances"]:
            pts = [
                None if (math.isnan(x) or math.isnan(y)) else [float(x), float(y)]
                for x, y in np.asarray(i["points"], dtype=np.float64)
            ]
            insts.append(
                {"kind": i["kind"], "score": i.get("score"), "points": pts}
            )
        frames.append({"video": f["video"], "frame_idx": f["frame_idx"], "instances": insts})
    return {"skeleton": desc["skeleton"], "videos": desc["videos"], "frames": frames}


def main():
    rng = np.random.default_rng(20261130)
    builders = [("mixed", mixed_case), ("two_node", two_node_case), ("no_match", no_match_case),
                ("empty_frame", empty_frame_case),
                ("user_in_predictions", user_in_predictions_case)]
    option_sets = [
        ("defaults", {}),
        ("stddev_scale_threshold", {"oks_stddev": 0.05, "oks_scale": 900.0,
                                    "match_threshold": 0.1}),
        ("all_instances", {"user_labels_only": False}),
    ]
    cases = []
    for name, build in builders:
        gt_desc, pr_desc = build(rng)
        for opt_name, opts in option_sets:
            full = {"oks_stddev": 0.025, "oks_scale": None, "match_threshold": 0.0,
                    "user_labels_only": True}
            full.update(opts)
            try:
                ev = Evaluator(to_sio(gt_desc), to_sio(pr_desc), **full)
                metrics = ev.evaluate()
            except Exception as e:  # recorded so the Rust side checks it errors too
                cases.append({"name": f"{name}/{opt_name}", "options": full,
                              "ground_truth": to_json_labels(gt_desc),
                              "predictions": to_json_labels(pr_desc),
                              "error": f"{type(e).__name__}: {e}"})
                continue
            safe = _metrics_to_json_safe(metrics)
            _prune_json_bloat(safe)
            cases.append({"name": f"{name}/{opt_name}", "options": full,
                          "ground_truth": to_json_labels(gt_desc),
                          "predictions": to_json_labels(pr_desc),
                          "metrics": safe})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"sleap_nn_version": sleap_nn.__version__,
                   "sleap_io_version": sio.__version__, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    for c in cases:
        m = c.get("metrics")
        if m is None:
            print(c["name"], "error:", c["error"])
        else:
            print(c["name"], "mOKS", m["mOKS"]["mOKS"], "mAP", m["voc_metrics"]["oks_voc.mAP"],
                  "pairs", len(m["distance_metrics"]["frame_idxs"]))


if __name__ == "__main__":
    main()
