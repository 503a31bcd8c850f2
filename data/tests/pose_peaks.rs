//! Parity with sleap-nn 0.3.5's peak finding and instance crops: replays the maps, images and
//! labels scripts/pose_peaks_reference.py wrote with sleap-nn's own outputs, to 1e-5.

use data::pose::peaks::{
    crop_around, crop_origin, find_instance_crop_size, global_peaks, local_peaks, Peak, Refinement,
};
use data::pose::targets::CentroidRule;
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pose_peaks/reference.json"
);
const TOL: f32 = 1e-5;

fn fixture() -> Value {
    let text = std::fs::read_to_string(FIXTURE).expect("read the pose_peaks fixture");
    serde_json::from_str(&text).expect("parse the pose_peaks fixture")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("number list")
        .iter()
        .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("non-negative integer") as usize
}

fn refinement(v: &Value) -> Refinement {
    match v.as_str().expect("refinement name") {
        "none" => Refinement::None,
        "integral" => Refinement::Integral,
        "local" => Refinement::Local,
        other => panic!("unknown refinement {other}"),
    }
}

fn close(got: f32, want: f32) -> bool {
    (got.is_nan() && want.is_nan()) || (got - want).abs() <= TOL
}

fn assert_peaks(label: &str, got: &[Peak], case: &Value) {
    let points = case["points"].as_array().expect("points");
    let scores = floats(&case["scores"]);
    assert_eq!(got.len(), points.len(), "{label}: peak count");
    for (i, (p, (want, score))) in got.iter().zip(points.iter().zip(scores)).enumerate() {
        let want = floats(want);
        assert!(
            close(p.x, want[0]) && close(p.y, want[1]) && close(p.score, score),
            "{label} peak {i}: got ({}, {}) score {}, sleap-nn ({}, {}) score {score}",
            p.x,
            p.y,
            p.score,
            want[0],
            want[1]
        );
    }
}

#[test]
fn global_peaks_match_sleap_nn() {
    let f = fixture();
    let g = &f["global"];
    let (c, h, w) = (
        usize_of(&g["channels"]),
        usize_of(&g["height"]),
        usize_of(&g["width"]),
    );
    let maps = floats(&g["maps"]);
    let cases = g["cases"].as_array().expect("global cases");
    assert!(!cases.is_empty());
    for case in cases {
        let threshold = case["threshold"].as_f64().expect("threshold") as f32;
        let refine = refinement(&case["refinement"]);
        let patch = usize_of(&case["patch"]);
        let got = global_peaks(&maps, c, h, w, threshold, refine, patch).expect("shape");
        let label = format!("global threshold {threshold} {refine:?} patch {patch}");
        assert_peaks(&label, &got, case);
    }
}

#[test]
fn local_peaks_match_sleap_nn() {
    let f = fixture();
    let l = &f["local"];
    let (h, w) = (usize_of(&l["height"]), usize_of(&l["width"]));
    let map = floats(&l["map"]);
    let cases = l["cases"].as_array().expect("local cases");
    assert!(!cases.is_empty());
    for case in cases {
        let threshold = case["threshold"].as_f64().expect("threshold") as f32;
        let refine = refinement(&case["refinement"]);
        let patch = usize_of(&case["patch"]);
        let got = local_peaks(&map, h, w, threshold, refine, patch).expect("shape");
        let label = format!("local threshold {threshold} {refine:?} patch {patch}");
        assert_peaks(&label, &got, case);
    }
}

#[test]
fn crops_match_sleap_nn() {
    let f = fixture();
    let cr = &f["crops"];
    let (c, h, w) = (
        usize_of(&cr["channels"]),
        usize_of(&cr["height"]),
        usize_of(&cr["width"]),
    );
    let image = floats(&cr["image"]);
    for case in cr["cases"].as_array().expect("crop cases") {
        let centre = floats(&case["centre"]);
        let centre = [centre[0], centre[1]];
        let size = usize_of(&case["crop_size"]);
        let origin = floats(&case["origin"]);
        let got_origin = crop_origin(centre, size);
        assert!(
            close(got_origin[0], origin[0]) && close(got_origin[1], origin[1]),
            "crop {size} at {centre:?}: origin {got_origin:?}, sleap-nn {origin:?}"
        );
        let want = floats(&case["crop"]);
        let got = crop_around(&image, c, h, w, centre, size).expect("shape");
        assert_eq!(got.len(), want.len(), "crop {size} at {centre:?}: length");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                close(*a, *b),
                "crop {size} at {centre:?}, value {i}: got {a}, sleap-nn {b}"
            );
        }
    }
}

#[test]
fn crop_size_matches_sleap_nn_on_the_minimal_labels() {
    let f = fixture();
    let cs = &f["crop_size"];
    let instances: Vec<Vec<[f64; 2]>> = cs["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|inst| {
            inst.as_array()
                .expect("points")
                .iter()
                .map(|p| {
                    let xy = |k: usize| p[k].as_f64().unwrap_or(f64::NAN);
                    [xy(0), xy(1)]
                })
                .collect()
        })
        .collect();
    assert_eq!(instances.len(), 2);
    for case in cs["cases"].as_array().expect("crop size cases") {
        let rule = match case["anchor"].as_u64() {
            Some(a) => CentroidRule::Anchor(a as usize),
            None => CentroidRule::CenterOfMass,
        };
        let min_crop = case["min_crop_size"].as_u64().map(|v| v as usize);
        let got = find_instance_crop_size(
            &instances,
            rule,
            usize_of(&case["padding"]),
            usize_of(&case["max_stride"]),
            min_crop,
        );
        assert_eq!(got, usize_of(&case["crop_size"]), "case {case}");
    }
}
