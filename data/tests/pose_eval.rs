//! Parity with sleap-nn 0.3.5's Evaluator: replays the cases scripts/pose_eval_reference.py
//! wrote (labels and sleap-nn's metrics) and compares every metric of `Metrics::to_json`.

use data::pose::eval::{evaluate, EvalError, EvalOptions};
use data::pose::{Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video, VideoSource};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pose_eval/reference.json"
);

fn labels_from_fixture(v: &Value) -> Labels {
    let skeleton = &v["skeleton"];
    let names = |key: &str| -> Vec<String> {
        skeleton[key]
            .as_array()
            .expect("skeleton list")
            .iter()
            .map(|n| n.as_str().expect("node name").to_string())
            .collect()
    };
    let edges = skeleton["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e[0].as_u64().expect("edge source") as usize,
                e[1].as_u64().expect("edge destination") as usize,
            )
        })
        .collect();
    let videos = v["videos"]
        .as_array()
        .expect("videos")
        .iter()
        .map(|f| {
            let filename = f.as_str().expect("video filename").to_string();
            Video {
                filename: filename.clone(),
                source: VideoSource::External {
                    filename,
                    backend: "MediaVideo".to_string(),
                    dataset: None,
                },
                shape: None,
            }
        })
        .collect();
    let frames = v["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| LabeledFrame {
            video: f["video"].as_u64().expect("frame video") as usize,
            frame_idx: f["frame_idx"].as_u64().expect("frame_idx"),
            instances: f["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .map(instance_from_fixture)
                .collect(),
        })
        .collect();
    Labels {
        skeletons: vec![Skeleton {
            name: skeleton["name"]
                .as_str()
                .expect("skeleton name")
                .to_string(),
            nodes: names("nodes"),
            edges,
            symmetries: Vec::new(),
        }],
        videos,
        frames,
        tracks: Vec::new(),
    }
}

fn instance_from_fixture(i: &Value) -> Instance {
    let points: Vec<[f64; 2]> = i["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| match p {
            Value::Null => [f64::NAN, f64::NAN],
            _ => [p[0].as_f64().expect("x"), p[1].as_f64().expect("y")],
        })
        .collect();
    let kind = match i["kind"].as_str().expect("kind") {
        "user" => InstanceKind::User,
        "predicted" => InstanceKind::Predicted {
            score: i["score"].as_f64().expect("score") as f32,
        },
        other => panic!("unknown instance kind {other}"),
    };
    let point_scores = match kind {
        InstanceKind::User => Vec::new(),
        InstanceKind::Predicted { .. } => vec![0.9; points.len()],
    };
    Instance {
        skeleton: 0,
        points,
        point_scores,
        kind,
        track: None,
        tracking_score: 0.0,
    }
}

fn options_from_fixture(o: &Value) -> EvalOptions {
    EvalOptions {
        oks_stddev: o["oks_stddev"].as_f64().expect("oks_stddev"),
        oks_scale: o["oks_scale"].as_f64(),
        match_threshold: o["match_threshold"].as_f64().expect("match_threshold"),
        user_labels_only: o["user_labels_only"].as_bool().expect("user_labels_only"),
    }
}

/// Walks sleap-nn's value and ours together: same keys, same lengths, numbers within 1e-6
/// (absolute below 1, relative above), null where sleap-nn has null.
fn compare(path: &str, expected: &Value, actual: &Value, failures: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<&String> = e.keys().collect();
            let mut ak: Vec<&String> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                failures.push(format!("{path}: keys {ek:?} != {ak:?}"));
            }
            for (k, ev) in e {
                if let Some(av) = a.get(k) {
                    compare(&format!("{path}.{k}"), ev, av, failures);
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                failures.push(format!("{path}: length {} != {}", e.len(), a.len()));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(&format!("{path}[{i}]"), ev, av, failures);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (e.as_f64().expect("number"), a.as_f64().expect("number"));
            if (e - a).abs() > 1e-6 * e.abs().max(1.0) {
                failures.push(format!("{path}: sleap-nn {e} != anvil {a}"));
            }
        }
        (e, a) if e == a => {}
        (e, a) => failures.push(format!("{path}: sleap-nn {e} != anvil {a}")),
    }
}

#[test]
fn every_metric_matches_sleap_nn() {
    let text = std::fs::read_to_string(FIXTURE).expect("read the pose_eval fixture");
    let fixture: Value = serde_json::from_str(&text).expect("parse the pose_eval fixture");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 15, "fixture holds {} cases", cases.len());
    let mut failures = Vec::new();
    let mut matched_somewhere = false;
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let gt = labels_from_fixture(&case["ground_truth"]);
        let pred = labels_from_fixture(&case["predictions"]);
        let opts = options_from_fixture(&case["options"]);
        let result = evaluate(&gt, &pred, &opts);
        if let Some(error) = case.get("error").and_then(Value::as_str) {
            // sleap-nn's failure, and the error anvil gives for the same input instead.
            match (error, result) {
                (e, Err(EvalError::EmptyGroundTruthFrame { .. }))
                    if e.contains("need at least one array to stack") => {}
                (e, Err(EvalError::UserInstanceInPredictions { .. }))
                    if e.contains("has no attribute 'score'") => {}
                (e, other) => panic!("{name}: sleap-nn failed with {e}; anvil gave {other:?}"),
            }
            continue;
        }
        let metrics = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        matched_somewhere |= metrics.n_matched > 0;
        compare(name, &case["metrics"], &metrics.to_json(), &mut failures);
    }
    assert!(matched_somewhere, "no case matched any instance");
    assert!(
        failures.is_empty(),
        "{} differences from sleap-nn:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
