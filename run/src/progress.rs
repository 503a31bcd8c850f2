//! The progress printer of `coordinator launch` and `worker train`: one status line fed by plain
//! numbers (epoch, step of total, loss, validation loss, learning rate, cells/s, tokens/s, and
//! for the coordinator the workers alive), with messages and the run's summary between.
//!
//! On an interactive terminal the status line is redrawn in place (and with the elapsed time on
//! every [`Progress::tick`]); anywhere else (a pipe, a file, a Slurm log) every step is a plain
//! line of its own and nothing is redrawn, so the log reads top to bottom.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One logged optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Step {
    pub epoch: u64,
    pub step: u64,
    /// 0 when not known.
    pub total_steps: u64,
    pub loss: f64,
    pub lr: f64,
    pub cells_per_s: f64,
    pub tokens_per_s: f64,
}

/// How a run ended, in numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary<'a> {
    /// "finished", "preempted", "finished <run name>", ...
    pub outcome: &'a str,
    pub steps: u64,
    pub seconds: f64,
    pub cells_per_s: f64,
    pub tokens_per_s: f64,
    /// NaN when no validation ran.
    pub best_val_loss: f64,
}

/// A loss with four decimals, or three significant digits when it is small (confidence-map
/// losses are around 1e-4).
fn loss_text(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// Whether a status line stands unfinished on this process's stderr; log lines written by
/// [`crate::logging`] erase it first (the next draw restores it).
static STDERR_LINE_DRAWN: AtomicBool = AtomicBool::new(false);

/// Erases a status line left on stderr, if any.
pub(crate) fn clear_stderr_line(err: &mut impl Write) {
    if STDERR_LINE_DRAWN.swap(false, Ordering::Relaxed) {
        let _ = err.write_all(b"\r\x1b[2K");
    }
}

pub struct Progress {
    out: Box<dyn Write + Send>,
    /// Redraw one line in place (a terminal) or print plain lines.
    redraw: bool,
    is_stderr: bool,
    /// Put before every line ("anvil: " for the coordinator).
    prefix: &'static str,
    /// What the throughput counts: "cells" (with tokens/s too) or e.g. "frames" (alone).
    unit: &'static str,
    started: Instant,
    last: Option<Step>,
    val_loss: Option<f64>,
    /// (alive, world), shown when set.
    workers: Option<(usize, usize)>,
    drawn: bool,
}

impl Progress {
    /// On stderr: redrawn when stderr is a terminal, plain lines otherwise.
    pub fn stderr(prefix: &'static str) -> Self {
        let mut p = Progress::new(
            Box::new(std::io::stderr()),
            std::io::stderr().is_terminal(),
            prefix,
        );
        p.is_stderr = true;
        p
    }

    pub fn new(out: Box<dyn Write + Send>, redraw: bool, prefix: &'static str) -> Self {
        Progress {
            out,
            redraw,
            is_stderr: false,
            prefix,
            unit: "cells",
            started: Instant::now(),
            last: None,
            val_loss: None,
            workers: None,
            drawn: false,
        }
    }

    /// Shows "workers alive/world" in the status line from now on.
    pub fn workers(&mut self, alive: usize, world: usize) {
        self.workers = Some((alive, world));
    }

    /// A logged step: redrawn in place on a terminal, a line of its own elsewhere.
    pub fn step(&mut self, step: Step) {
        self.last = Some(step);
        if self.redraw {
            self.draw();
        } else {
            let line = format!("{}{}\n", self.prefix, self.status());
            self.write(&line);
        }
    }

    /// A validation loss: a message, and part of the status line from now on.
    pub fn validation(&mut self, epoch: u64, loss: f64) {
        self.val_loss = Some(loss);
        self.log(&format!(
            "epoch {epoch} validation loss {}",
            loss_text(loss)
        ));
    }

    /// A message on a line of its own (the status line is redrawn at the next step or tick).
    pub fn log(&mut self, message: &str) {
        self.clear();
        let line = format!("{}{message}\n", self.prefix);
        self.write(&line);
    }

    /// Redraws the status line with the elapsed time (a terminal only).
    pub fn tick(&mut self) {
        if self.redraw && self.last.is_some() {
            self.draw();
        }
    }

    /// Erases the status line, leaving the cursor at the start of an empty line.
    pub fn clear(&mut self) {
        if self.drawn {
            self.write("\r\x1b[2K");
            self.drawn = false;
        }
    }

    /// Counts throughput in `unit`s per second ("frames" for pose models), without tokens/s.
    pub fn set_unit(&mut self, unit: &'static str) {
        self.unit = unit;
    }

    /// The last logged step.
    pub fn last(&self) -> Option<Step> {
        self.last
    }

    /// The status line: `epoch 1 step 40/100 | loss 5.1234 | val 5.3000 | lr 1.00e-4 |
    /// 85 cells/s | 21760 tokens/s | workers 2/2 | 0:42`.
    pub fn status(&self) -> String {
        let Some(s) = self.last else {
            return String::new();
        };
        let total = if s.total_steps > 0 {
            format!("/{}", s.total_steps)
        } else {
            String::new()
        };
        let mut line = format!(
            "epoch {} step {}{total} | loss {}",
            s.epoch,
            s.step,
            loss_text(s.loss)
        );
        if let Some(v) = self.val_loss {
            line.push_str(&format!(" | val {}", loss_text(v)));
        }
        line.push_str(&format!(
            " | lr {:.2e} | {}",
            s.lr,
            self.rates(s.cells_per_s, s.tokens_per_s)
        ));
        if let Some((alive, world)) = self.workers {
            line.push_str(&format!(" | workers {alive}/{world}"));
        }
        let t = self.started.elapsed().as_secs();
        line.push_str(&format!(" | {}:{:02}", t / 60, t % 60));
        line
    }

    /// Ends the status line and prints how the run ended.
    pub fn summary(&mut self, s: &Summary) {
        let best = if s.best_val_loss.is_finite() {
            loss_text(s.best_val_loss)
        } else {
            "n/a".into()
        };
        let rates = self
            .rates(s.cells_per_s, s.tokens_per_s)
            .replace(" | ", ", ");
        self.log(&format!(
            "{} after {} steps in {:.1}s ({rates}); best validation loss {best}",
            s.outcome, s.steps, s.seconds
        ));
    }

    /// "85 cells/s | 21760 tokens/s", or "3 frames/s" for a unit without tokens.
    fn rates(&self, per_s: f64, tokens_per_s: f64) -> String {
        if self.unit == "cells" {
            format!("{per_s:.0} cells/s | {tokens_per_s:.0} tokens/s")
        } else {
            format!("{per_s:.1} {}/s", self.unit)
        }
    }

    fn draw(&mut self) {
        let line = format!("\r\x1b[2K{}{}", self.prefix, self.status());
        self.write(&line);
        self.drawn = true;
        if self.is_stderr {
            STDERR_LINE_DRAWN.store(true, Ordering::Relaxed);
        }
    }

    fn write(&mut self, text: &str) {
        if self.is_stderr && !self.drawn {
            // A log line may have erased the status line already.
            STDERR_LINE_DRAWN.store(false, Ordering::Relaxed);
        }
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn step(step: u64) -> Step {
        Step {
            epoch: 1,
            step,
            total_steps: 100,
            loss: 5.5,
            lr: 1e-4,
            cells_per_s: 80.4,
            tokens_per_s: 20_000.0,
        }
    }

    #[test]
    fn a_log_gets_plain_lines() {
        let out = Captured::default();
        let mut p = Progress::new(Box::new(out.clone()), false, "anvil: ");
        p.workers(2, 2);
        p.step(step(40));
        p.validation(1, 6.0);
        p.step(step(50));
        p.tick();
        p.summary(&Summary {
            outcome: "finished",
            steps: 50,
            seconds: 12.34,
            cells_per_s: 80.4,
            tokens_per_s: 20_000.0,
            best_val_loss: 6.0,
        });
        drop(p);
        let text = out.text();
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with(
                "anvil: epoch 1 step 40/100 | loss 5.5000 | lr 1.00e-4 | 80 cells/s | 20000 tokens/s | workers 2/2 | 0:0"
            ),
            "{text}"
        );
        assert_eq!(lines[1], "anvil: epoch 1 validation loss 6.0000");
        assert!(
            lines[2].contains("step 50/100 | loss 5.5000 | val 6.0000 |"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "anvil: finished after 50 steps in 12.3s (80 cells/s, 20000 tokens/s); best validation loss 6.0000"
        );
    }

    #[test]
    fn a_terminal_gets_one_redrawn_line() {
        let out = Captured::default();
        let mut p = Progress::new(Box::new(out.clone()), true, "");
        p.step(step(1));
        p.step(step(2));
        p.tick();
        p.log("checkpoint at step 2: last");
        p.step(step(3));
        drop(p);
        let text = out.text();
        // Every draw erases the line first; a message erases it and ends with a newline; the
        // line is erased at the end.
        assert_eq!(
            text.matches("\r\x1b[2Kepoch 1 step ").count(),
            4,
            "{text:?}"
        );
        assert!(
            text.contains("\r\x1b[2Kcheckpoint at step 2: last\n"),
            "{text:?}"
        );
        assert!(text.ends_with("\r\x1b[2K"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    }
}
