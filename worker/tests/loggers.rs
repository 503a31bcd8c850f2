//! The metric loggers on short training runs: Lightning's version_N layout, metrics.csv rows
//! equal to what the trainer reported, a resumed run continuing its version without repeated
//! steps, TensorBoard event files read back by the `tensorboard` package, and `wandb`'s
//! one-line account of what it writes instead.
//! Run in release: `cargo test --release -p worker --test loggers`. The TensorBoard check needs
//! the interpreter in ANVIL_PYTHON (`scripts/test.sh` sets it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use configs::scmodelforge::{Logger, ScModelForgeConfig};
use worker::loggers::{self, perplexity};
use worker::train::{train, Control, NoSync, TrainEvent, TrainOptions, TrainSummary};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny model on the bundled PBMC cells, logging every step: about 20 steps an epoch.
fn small_config(logger: Logger, epochs: usize) -> ScModelForgeConfig {
    let path = repo().join("configs/quickstart.yaml");
    let data = repo().join("data/pbmc68k_counts.h5ad");
    let overrides = vec![
        format!("data.paths=[{}]", data.display()),
        "data.max_genes=32".into(),
        "tokenizer.max_genes=32".into(),
        "model.hidden_dim=16".into(),
        "model.num_layers=1".into(),
        "model.num_heads=2".into(),
        "model.ffn_dim=32".into(),
        "model.max_seq_len=32".into(),
        "training.batch_size=16".into(),
        format!("training.max_epochs={epochs}"),
        "training.log_every_n_steps=1".into(),
        "training.save_top_k=1".into(),
        "training.gradient_accumulation=2".into(),
        format!("training.logger={}", logger.as_str()),
    ];
    configs::load_file_as::<ScModelForgeConfig>(&path, &overrides).expect("config loads")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anvil-loggers-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Removes a test's directories when it passes (a failing one leaves them to look at).
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            for d in &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// Trains, returning the summary and every event.
fn run(cfg: &ScModelForgeConfig, opts: &TrainOptions) -> (TrainSummary, Vec<TrainEvent>) {
    let mut events = Vec::new();
    let summary = train(cfg, opts, &mut NoSync, &mut |e| events.push(e), &mut || {
        Control::Continue
    })
    .expect("training runs");
    (summary, events)
}

fn opts(run_dir: &Path, resume: Option<&Path>, max_steps: Option<u64>) -> TrainOptions {
    let mut o = TrainOptions::single(run_dir);
    o.resume_from = resume.map(Path::to_path_buf);
    o.max_steps = max_steps;
    o
}

/// A logged row: its step and its metrics by name.
type Row = (u64, BTreeMap<String, f64>);

/// The rows a run's Step and Validation events stand for.
fn expected_rows(events: &[TrainEvent]) -> Vec<Row> {
    let mut rows = Vec::new();
    for e in events {
        let (step, values): (u64, Vec<(&str, f64)>) = match e {
            TrainEvent::Step {
                epoch,
                step,
                loss,
                lr,
                grad_norm,
                cells_per_s,
                tokens_per_s,
                step_seconds,
                allreduce_seconds,
            } => (
                *step,
                vec![
                    ("epoch", *epoch as f64),
                    ("lr-AdamW", *lr),
                    ("perf/allreduce_time_ms", allreduce_seconds * 1e3),
                    ("perf/cells_per_sec", *cells_per_s),
                    ("perf/step_time_ms", step_seconds * 1e3),
                    ("perf/tokens_per_sec", *tokens_per_s),
                    ("train/grad_norm", *grad_norm),
                    ("train/loss", *loss),
                    ("train/perplexity", perplexity(*loss)),
                ],
            ),
            TrainEvent::Validation { epoch, step, loss } => (
                *step,
                vec![
                    ("epoch", *epoch as f64),
                    ("val/loss", *loss),
                    ("val/perplexity", perplexity(*loss)),
                ],
            ),
            _ => continue,
        };
        rows.push((
            step,
            values
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ));
    }
    rows
}

/// metrics.csv as its header and rows (the non-empty cells by column).
fn read_csv(path: &Path) -> (Vec<String>, Vec<Row>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("a header")
        .split(',')
        .map(String::from)
        .collect();
    let rows = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "row {l:?}");
            let mut step = None;
            let mut values = BTreeMap::new();
            for (h, c) in header.iter().zip(cells) {
                if c.is_empty() {
                    continue;
                }
                if h == "step" {
                    step = Some(c.parse::<u64>().expect("an integer step"));
                } else {
                    values.insert(h.clone(), c.parse::<f64>().expect("a number"));
                }
            }
            (step.expect("every row has its step"), values)
        })
        .collect();
    (header, rows)
}

/// Equal as numbers, NaN equal to NaN.
fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn assert_rows_equal(got: &[Row], want: &[Row], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for ((gs, gv), (ws, wv)) in got.iter().zip(want) {
        assert_eq!(gs, ws, "{what}: steps");
        assert_eq!(
            gv.keys().collect::<Vec<_>>(),
            wv.keys().collect::<Vec<_>>(),
            "{what}: metrics at step {gs}"
        );
        for (k, w) in wv {
            assert!(
                same(gv[k], *w),
                "{what}: {k} at step {gs}: {} vs {w}",
                gv[k]
            );
        }
    }
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("tfevents")
        })
        .collect();
    v.sort();
    v
}

/// The interpreter with the `tensorboard` package, or None (skipped, said loudly) outside CI.
fn python() -> Option<PathBuf> {
    match std::env::var_os("ANVIL_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => panic!(
            "ANVIL_PYTHON is not set: CI must run the tests through scripts/test.sh, which \
             installs tensorboard (scripts/install-deps.sh) and exports ANVIL_PYTHON"
        ),
        None => {
            eprintln!(
                "SKIPPED: the TensorBoard read-back needs ANVIL_PYTHON (an interpreter with \
                 the tensorboard package); run scripts/test.sh"
            );
            None
        }
    }
}

/// Stop after 5 steps with a checkpoint; resume from it for 3 steps; then, as if the run had
/// crashed there, resume from the same step-5 checkpoint again and train to the end. The one
/// version must hold the uninterrupted run's curve once, and TensorBoard must read the same.
#[test]
fn a_resumed_run_continues_its_version_and_tensorboard_reads_what_was_logged() {
    let cfg = small_config(Logger::Tensorboard, 2);
    let (clean_dir, dir, ck) = (tmp("tb-clean"), tmp("tb-resumed"), tmp("tb-ck5"));
    let _scratch = Scratch(vec![clean_dir.clone(), dir.clone(), ck.clone()]);
    let (_, clean) = run(&cfg, &opts(&clean_dir, None, None));
    let k = 5;
    let (a, events_a) = run(&cfg, &opts(&dir, None, Some(k)));
    copy_dir(&a.last_checkpoint.expect("a checkpoint at step 5"), &ck);
    let (b, events_b) = run(&cfg, &opts(&dir, Some(&ck), Some(k + 3)));
    assert_eq!(b.global_step, k + 3);
    let (_, events_c) = run(&cfg, &opts(&dir, Some(&ck), None));
    let note = |events: &[TrainEvent]| {
        events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Log(m) if m.starts_with("metrics go to") => Some(m.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(note(&events_b).len(), 1);
    assert!(
        note(&events_b)[0].contains("continuing version_0 after step 5"),
        "{:?}",
        note(&events_b)
    );

    let version = dir.join("version_0");
    assert!(
        !dir.join("version_1").exists(),
        "a resume opened a new version"
    );
    let (header, rows) = read_csv(&version.join("metrics.csv"));
    assert_eq!(header, loggers::columns("lr-AdamW"));
    let mut want = expected_rows(&events_a);
    want.extend(expected_rows(&events_c));
    assert_rows_equal(&rows, &want, "metrics.csv after two resumes");
    // Steps 6-8 of the abandoned attempt are gone; the curve is the uninterrupted one.
    let loss_by_step = |rows: &[Row]| -> Vec<(u64, f64)> {
        rows.iter()
            .filter_map(|(s, v)| Some((*s, *v.get("train/loss")?)))
            .collect()
    };
    assert_eq!(loss_by_step(&rows), loss_by_step(&expected_rows(&clean)));
    let vals: Vec<_> = rows
        .iter()
        .filter(|r| r.1.contains_key("val/loss"))
        .collect();
    assert_eq!(vals.len(), 2, "one validation row per epoch");

    let files = event_files(&version);
    assert_eq!(files.len(), 3, "{files:?}");
    let Some(py) = python() else { return };
    let script = repo().join("worker/tests/tensorboard_read.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&version)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{} failed (a bad record checksum raises):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(read["file_version"], 2.0);
    let per_file = read["files"].as_array().unwrap();
    let logged = [&events_a, &events_b, &events_c].map(|e| expected_rows(e).len() as u64);
    for (i, f) in per_file.iter().enumerate() {
        assert_eq!(f["first_file_version"], "brain.Event:2", "{f}");
        let starts: Vec<u64> = serde_json::from_value(f["session_starts"].clone()).unwrap();
        // The resumed files open with a START at the first step they log again.
        let want_starts = if i == 0 { vec![] } else { vec![k + 1] };
        assert_eq!(starts, want_starts, "{f}");
        let records = 1 + want_starts.len() as u64 + logged[i];
        assert_eq!(f["records"], records, "{f}");
    }
    // What TensorBoard shows per tag: each value exactly the f32 of what the trainer reported.
    let mut by_tag: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (step, values) in &want {
        for (tag, v) in values {
            by_tag
                .entry(tag.clone())
                .or_default()
                .push((*step, *v as f32 as f64));
        }
    }
    let scalars: BTreeMap<String, Vec<(u64, f64)>> =
        serde_json::from_value(read["scalars"].clone()).expect("tag -> [[step, value]]");
    assert_eq!(
        scalars.keys().collect::<Vec<_>>(),
        by_tag.keys().collect::<Vec<_>>()
    );
    for (tag, want) in &by_tag {
        let got = &scalars[tag];
        assert_eq!(got.len(), want.len(), "{tag}: {got:?}");
        for ((gs, gv), (ws, wv)) in got.iter().zip(want) {
            assert_eq!(gs, ws, "{tag}");
            assert!(same(*gv, *wv), "{tag} at step {gs}: {gv} vs {wv}");
        }
    }
}

#[test]
fn csv_writes_lightnings_layout_and_a_fresh_run_takes_the_next_version() {
    let cfg = small_config(Logger::Csv, 1);
    let dir = tmp("csv");
    let _scratch = Scratch(vec![dir.clone()]);
    let (_, first) = run(&cfg, &opts(&dir, None, Some(3)));
    let v0 = dir.join("version_0");
    let csv0 = std::fs::read_to_string(v0.join("metrics.csv")).unwrap();
    assert!(
        csv0.starts_with(
            "epoch,lr-AdamW,perf/allreduce_time_ms,perf/cells_per_sec,perf/step_time_ms,\
             perf/tokens_per_sec,step,train/grad_norm,train/loss,train/perplexity,val/loss,\
             val/perplexity\n0,"
        ),
        "{csv0}"
    );
    let (_, rows) = read_csv(&v0.join("metrics.csv"));
    assert_rows_equal(&rows, &expected_rows(&first), "version_0");
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(event_files(&v0).is_empty(), "csv writes no event files");

    let hparams = std::fs::read_to_string(v0.join("hparams.yaml")).unwrap();
    let tree = configs::tree::parse(&hparams, 0, "hparams.yaml").expect("hparams.yaml parses");
    let get = |a: &str, b: &str| {
        tree.get(a)
            .and_then(|n| n.get(b))
            .and_then(|n| n.scalar())
            .unwrap_or_else(|| panic!("{a}.{b} in\n{hparams}"))
            .to_string()
    };
    let t = &cfg.training;
    assert_eq!(get("optimizer_config", "name"), "adamw");
    assert_eq!(
        get("optimizer_config", "lr").parse::<f64>().unwrap(),
        t.optimizer.lr
    );
    assert_eq!(
        get("optimizer_config", "weight_decay")
            .parse::<f64>()
            .unwrap(),
        t.optimizer.weight_decay
    );
    let sched = t.scheduler.as_ref().expect("quickstart has a scheduler");
    assert_eq!(
        get("scheduler_config", "warmup_steps"),
        sched.warmup_steps.to_string()
    );
    assert_eq!(get("scheduler_config", "name"), sched.name.as_str());

    // A second fresh run in the same directory: version_1; version_0 is left alone.
    let (_, second) = run(&cfg, &opts(&dir, None, Some(2)));
    assert_eq!(
        std::fs::read_to_string(v0.join("metrics.csv")).unwrap(),
        csv0
    );
    let (_, rows1) = read_csv(&dir.join("version_1/metrics.csv"));
    assert_rows_equal(&rows1, &expected_rows(&second), "version_1");
    assert!(dir.join("version_1/hparams.yaml").exists());
    assert!(second.iter().any(|e| matches!(
        e,
        TrainEvent::Log(m) if m.starts_with("metrics go to") && m.contains("version_1")
    )));
}

#[test]
fn wandb_says_once_that_it_writes_tensorboard_and_csv_instead() {
    let cfg = small_config(Logger::Wandb, 1);
    let dir = tmp("wandb");
    let _scratch = Scratch(vec![dir.clone()]);
    let (_, events) = run(&cfg, &opts(&dir, None, Some(2)));
    let version = dir.join("version_0");
    let lines: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Log(m) if m.contains("wandb") => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines[0];
    for part in [
        "no Weights & Biases client",
        "TensorBoard event files, metrics.csv and hparams.yaml",
        &format!(
            "wandb sync --sync-tensorboard --project scmodelforge {}",
            version.display()
        ),
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    assert_eq!(event_files(&version).len(), 1);
    let (_, rows) = read_csv(&version.join("metrics.csv"));
    assert_rows_equal(&rows, &expected_rows(&events), "wandb's metrics.csv");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
