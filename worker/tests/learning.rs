//! Evidence of learning on the bundled PBMC cells with `configs/quickstart.yaml` (one worker,
//! batch 32, 10 epochs, 190 steps): the validation loss of masked gene prediction must end at
//! least 0.3 nats below the loss of predicting masked genes from their frequency alone (6.37
//! nats on this file; a PyTorch model of this config ends its 10 epochs at that baseline).
//! About two minutes in release; it prints the throughput recorded in BENCHMARKS.md:
//!
//!     cargo test --release -p worker --test learning -- --nocapture

use std::path::{Path, PathBuf};

use configs::scmodelforge::ScModelForgeConfig;
use worker::train::{frequency_baseline, train, Control, NoSync, TrainEvent, TrainOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn quickstart() -> ScModelForgeConfig {
    let data = format!(
        "data.paths=[{}]",
        repo().join("data/pbmc68k_counts.h5ad").display()
    );
    configs::load_file_as::<ScModelForgeConfig>(&repo().join("configs/quickstart.yaml"), &[data])
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
fn quickstart_validation_loss_beats_gene_frequencies() {
    let cfg = quickstart();
    let baseline = frequency_baseline(&cfg).expect("baseline");
    println!("frequency baseline: {baseline:.4} nats");
    assert!((baseline - 6.38).abs() < 0.1, "baseline {baseline}");
    let t = std::time::Instant::now();
    let s = train(
        &cfg,
        &TrainOptions::single(run_dir("quickstart")),
        &mut NoSync,
        &mut print_event,
        &mut || Control::Continue,
    )
    .expect("trains");
    assert_eq!(s.global_step, 190);
    let last = s.val_losses.last().expect("validation ran").1;
    println!(
        "quickstart: {} steps, final val_loss {last:.4} (baseline {baseline:.4}, margin {:.4}), train {:.1} s, {:.1} cells/s, {:.0} tokens/s, wall {:.1} s",
        s.global_step,
        baseline - last,
        s.train_seconds,
        s.cells_per_s,
        s.tokens_per_s,
        t.elapsed().as_secs_f64()
    );
    assert!(
        last <= baseline - 0.3,
        "validation loss {last:.4} is not 0.3 nats below the frequency baseline {baseline:.4}"
    );
}
