//! The csv logger: `metrics.csv` in the run directory, one row per logged training step and
//! one per validation. Appends when the file exists (a resumed run continues its log).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

pub const HEADER: &str = "step,epoch,loss,lr,grad_norm,cells_per_s,tokens_per_s,val_loss";

pub struct CsvLogger {
    out: BufWriter<File>,
}

impl CsvLogger {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let exists = path.metadata().map(|m| m.len() > 0).unwrap_or(false);
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let mut out = BufWriter::new(f);
        if !exists {
            writeln!(out, "{HEADER}")?;
            out.flush()?;
        }
        Ok(CsvLogger { out })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        step: u64,
        epoch: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        cells_per_s: f64,
        tokens_per_s: f64,
    ) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{step},{epoch},{loss:.6},{lr:.6e},{grad_norm:.6},{cells_per_s:.2},{tokens_per_s:.1},"
        )?;
        self.out.flush()
    }

    pub fn validation(&mut self, step: u64, epoch: u64, val_loss: f64) -> std::io::Result<()> {
        writeln!(self.out, "{step},{epoch},,,,,,{val_loss:.6}")?;
        self.out.flush()
    }
}
