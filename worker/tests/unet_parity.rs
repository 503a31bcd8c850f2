//! worker::pose::unet against sleap-nn 0.3.5's own model: the same config, weights and input.
//! The fixture comes from `/var/tmp/sleapnn-venv/bin/python scripts/unet_reference.py`: three
//! small UNets (bilinear and transposed-conv upsampling, 1 and 3 input channels, a head at
//! output stride 1 and 2) run by sleap-nn in float64. anvil's f32 model must give the same
//! confidence maps (within 1e-4 of their largest magnitude), the same MSE loss and the same
//! gradient for every parameter (within 1e-3 of each tensor's largest gradient).

use std::collections::{BTreeMap, BTreeSet};

use configs::pose_net::UNetPlan;
use configs::SleapNnConfig;
use kernels::{Cpu, Precision};
use serde::Deserialize;
use worker::pose::unet::{UNetModel, UNetRun};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_reference/cases.json"
);

#[derive(Deserialize)]
struct Fixture {
    sleap_nn: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config_yaml: String,
    channels: usize,
    n: usize,
    h: usize,
    w: usize,
    output_shape: Vec<usize>,
    weights: BTreeMap<String, Vec<f64>>,
    shapes: BTreeMap<String, Vec<usize>>,
    input: Vec<f64>,
    target: Vec<f64>,
    output: Vec<f64>,
    loss: f64,
    grads: BTreeMap<String, Vec<f64>>,
}

fn load_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let f: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    assert_eq!(f.sleap_nn, "0.3.5");
    assert_eq!(f.cases.len(), 3, "{FIXTURE}: cases");
    f.cases
}

fn model_of(case: &Case) -> UNetModel {
    let cfg: SleapNnConfig = configs::Sources::from_str(&case.config_yaml, &case.name)
        .and_then(|s| s.load_as())
        .unwrap_or_else(|e| panic!("{}: config: {e}", case.name));
    let plan = UNetPlan::from_config(&cfg, case.channels)
        .unwrap_or_else(|e| panic!("{}: plan: {e}", case.name));
    UNetModel::new(plan, Precision::F32)
}

/// Largest |a − b| over the largest |b|.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()));
    diff / scale.max(1e-30)
}

/// What anvil computes for a case: maps, loss, gradients by name.
struct Anvil {
    output: Vec<f32>,
    shape: (usize, usize, usize),
    loss: f64,
    grads: BTreeMap<String, Vec<f32>>,
}

fn run_anvil(case: &Case, model: &UNetModel) -> Anvil {
    let layout = model.layout();
    let ours: BTreeSet<&str> = layout.entries().iter().map(|e| e.name.as_str()).collect();
    let theirs: BTreeSet<&str> = case.weights.keys().map(String::as_str).collect();
    assert_eq!(ours, theirs, "{}: parameter names", case.name);
    let mut params = vec![0.0f32; layout.total()];
    for e in layout.entries() {
        assert_eq!(
            e.shape, case.shapes[&e.name],
            "{}: shape of {}",
            case.name, e.name
        );
        let w: Vec<f32> = case.weights[&e.name].iter().map(|&v| v as f32).collect();
        layout.set_host(&mut params, &e.name, &w).unwrap();
    }
    let input: Vec<f32> = case.input.iter().map(|&v| v as f32).collect();
    let dev = Cpu;
    let mut run = UNetRun::new(model, &dev);
    let output = run
        .forward(&params, &input, case.n, case.h, case.w)
        .unwrap_or_else(|e| panic!("{}: forward: {e}", case.name))
        .clone();
    let shape = run.output_shape().expect("a forward ran");
    assert_eq!(
        output.len(),
        case.target.len(),
        "{}: output size",
        case.name
    );
    // nn.MSELoss (mean): loss = Σ(y − t)² / N, d loss / dy = 2(y − t) / N.
    let count = output.len() as f64;
    let loss = output
        .iter()
        .zip(&case.target)
        .map(|(&y, &t)| (y as f64 - t).powi(2))
        .sum::<f64>()
        / count;
    let dout: Vec<f32> = output
        .iter()
        .zip(&case.target)
        .map(|(&y, &t)| (2.0 * (y as f64 - t) / count) as f32)
        .collect();
    let mut grads = vec![0.0f32; layout.total()];
    run.backward(&params, &mut grads, &dout)
        .unwrap_or_else(|e| panic!("{}: backward: {e}", case.name));
    let grads = layout
        .entries()
        .iter()
        .map(|e| (e.name.clone(), grads[e.offset..e.offset + e.len()].to_vec()))
        .collect();
    Anvil {
        output,
        shape,
        loss,
        grads,
    }
}

#[test]
fn unet_matches_sleap_nn_forward_loss_and_gradients() {
    for case in load_cases() {
        let model = model_of(&case);
        let got = run_anvil(&case, &model);
        let (c, h, w) = got.shape;
        assert_eq!(
            vec![case.n, c, h, w],
            case.output_shape,
            "{}: output shape",
            case.name
        );
        let out_err = rel_err(&got.output, &case.output);
        assert!(
            out_err < 1e-4,
            "{}: confidence maps differ from sleap-nn's by {out_err:.3e} of their max",
            case.name
        );
        let loss_err = (got.loss - case.loss).abs() / case.loss;
        assert!(
            loss_err < 1e-4,
            "{}: loss {} vs sleap-nn's {}",
            case.name,
            got.loss,
            case.loss
        );
        let mut worst = (0.0f64, String::new());
        for (name, g) in &got.grads {
            let err = rel_err(g, &case.grads[name]);
            assert!(
                err < 1e-3,
                "{}: gradient of {name} differs from sleap-nn's by {err:.3e} of its max",
                case.name
            );
            if err > worst.0 {
                worst = (err, name.clone());
            }
        }
        eprintln!(
            "{}: maps {out_err:.2e}, loss {loss_err:.2e}, worst gradient {:.2e} ({})",
            case.name, worst.0, worst.1
        );
    }
}

/// The reference is not trivially matched: the cases differ from each other and their maps and
/// gradients are far from zero, so a comparison above can fail.
#[test]
fn reference_cases_are_distinct_and_nontrivial() {
    let cases = load_cases();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len());
    for case in &cases {
        let max_out = case.output.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max_out > 1e-3, "{}: maps all near zero", case.name);
        for (name, g) in &case.grads {
            let max_g = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(max_g > 0.0, "{}: gradient of {name} is zero", case.name);
        }
    }
}
