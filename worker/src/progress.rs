//! A one-line progress bar for `worker train` on an interactive terminal: step, epoch, loss,
//! validation loss and throughput, redrawn in place on stderr. On a non-terminal it stays
//! silent (metrics.csv and the log carry the same numbers).

use std::io::{IsTerminal, Write};

use configs::ScModelForgeConfig;

use crate::train::{TrainEvent, TrainSummary};

pub struct Progress {
    enabled: bool,
    total: u64,
    val: Option<f64>,
    width: usize,
}

impl Progress {
    pub fn new(_cfg: &ScModelForgeConfig) -> Self {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            total: 0,
            val: None,
            width: 30,
        }
    }

    /// The bar text for a step (without the carriage return).
    pub fn render(
        &self,
        step: u64,
        epoch: u64,
        loss: f64,
        cells_per_s: f64,
        tokens_per_s: f64,
    ) -> String {
        let frac = if self.total > 0 {
            (step as f64 / self.total as f64).min(1.0)
        } else {
            0.0
        };
        let filled = (frac * self.width as f64).round() as usize;
        let val = self.val.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        format!(
            "[{}{}] {step}/{} epoch {epoch} loss {loss:.4}{val} {cells_per_s:.1} cells/s {tokens_per_s:.0} tok/s",
            "#".repeat(filled),
            "-".repeat(self.width - filled),
            self.total
        )
    }

    pub fn on_event(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Start { total_steps, .. } => self.total = *total_steps,
            TrainEvent::Validation { loss, .. } => self.val = Some(*loss),
            TrainEvent::Step {
                epoch,
                step,
                loss,
                cells_per_s,
                tokens_per_s,
                ..
            } if self.enabled => {
                let line = self.render(*step, *epoch, *loss, *cells_per_s, *tokens_per_s);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
            _ => {}
        }
    }

    /// Ends the bar's line and prints the run's outcome.
    pub fn finish(&self, s: &TrainSummary) {
        if self.enabled {
            eprintln!();
        }
        let val = s
            .val_losses
            .last()
            .map(|(_, v)| format!(", validation loss {v:.4}"))
            .unwrap_or_default();
        eprintln!(
            "{}: {} steps, loss {:.4}{val}, {:.1} cells/s, {:.0} tokens/s{}",
            s.run_name,
            s.global_step,
            s.losses.last().copied().unwrap_or(f64::NAN),
            s.cells_per_s,
            s.tokens_per_s,
            s.last_checkpoint
                .as_ref()
                .map(|p| format!(", checkpoint {}", p.display()))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_progress() {
        let mut p = Progress::new(&ScModelForgeConfig::default());
        p.on_event(&TrainEvent::Start {
            run_name: "r".into(),
            parameters: 1,
            steps_per_epoch: 10,
            total_steps: 100,
            start_step: 0,
        });
        p.on_event(&TrainEvent::Validation {
            epoch: 0,
            step: 10,
            loss: 6.0,
        });
        let s = p.render(50, 4, 5.5, 80.0, 20000.0);
        assert!(
            s.starts_with("[###############---------------] 50/100 epoch 4 loss 5.5000 val 6.0000"),
            "{s}"
        );
    }
}
