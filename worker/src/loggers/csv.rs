//! `metrics.csv` as Lightning's CSVLogger writes it: a header of metric names (`step` among
//! them), one row per logging call, empty cells for metrics the row does not have, numbers as
//! Python prints them (`nan` for NaN). anvil's rows are complete at once, so each is written
//! (and reaches the file) when it is logged, rather than in Lightning's batches of 100.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct CsvLogger {
    file: File,
    path: PathBuf,
    columns: Vec<String>,
}

impl CsvLogger {
    /// A new metrics.csv with `columns` as its header (an old file at `path` is replaced).
    pub fn create(path: &Path, columns: &[&str]) -> std::io::Result<Self> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        write_atomic(path, &format!("{}\n", columns.join(",")))?;
        Self::append_to(path, columns)
    }

    /// Continues the metrics.csv at `path` (a resumed run): keeps its rows up to and including
    /// step `keep_through` and drops the later ones, which the resumed run logs again. Columns
    /// the old file has beyond `columns` are kept after them. A missing file starts anew.
    pub fn resume(path: &Path, columns: &[&str], keep_through: u64) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::create(path, columns)
            }
            Err(e) => return Err(e),
        };
        let mut lines = text.lines();
        let old: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let Some(step_at) = old.iter().position(|c| *c == "step") else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a metrics.csv: its header has no step column",
            ));
        };
        let mut header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        for c in &old {
            if !c.is_empty() && !header.iter().any(|h| h == c) {
                header.push(c.to_string());
            }
        }
        let out = rewrite(lines, &old, &header, |cells| {
            cells
                .get(step_at)
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s <= keep_through)
        });
        write_atomic(path, &out)?;
        Self::append_to(path, header)
    }

    fn append_to(path: &Path, columns: Vec<String>) -> std::io::Result<Self> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(CsvLogger {
            file,
            path: path.to_path_buf(),
            columns,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the `names` that are not columns yet, as Lightning's CSVLogger does when a metric
    /// first appears mid-run: the file is rewritten with the wider header (sorted, like the
    /// first one), earlier rows keeping their values and leaving the new columns empty.
    pub fn add_columns(&mut self, names: &[&str]) -> std::io::Result<()> {
        let new: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.columns.iter().any(|c| c == n))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.file.flush()?;
        let text = std::fs::read_to_string(&self.path)?;
        let mut header = self.columns.clone();
        header.extend(new.iter().map(|n| n.to_string()));
        header.sort_unstable();
        let old: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        let out = rewrite(text.lines().skip(1), &old, &header, |_| true);
        write_atomic(&self.path, &out)?;
        *self = Self::append_to(&self.path.clone(), header)?;
        Ok(())
    }

    /// One row: `step`, and each `(column, value)`; columns not named stay empty. A name that
    /// is not a column is a bug in the caller.
    pub fn row(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let mut cells = vec![String::new(); self.columns.len()];
        for (i, c) in self.columns.iter().enumerate() {
            if c == "step" {
                cells[i] = step.to_string();
            } else if let Some((_, v)) = values.iter().find(|(n, _)| n == c) {
                cells[i] = number(*v);
            }
        }
        debug_assert!(
            values
                .iter()
                .all(|(n, _)| self.columns.iter().any(|c| c == n)),
            "a metric without a column: {values:?} vs {:?}",
            self.columns
        );
        let mut line = cells.join(",");
        line.push('\n');
        self.file.write_all(line.as_bytes())
    }
}

/// The CSV text of the `rows` (under the header `old`) that `keep` selects, under `header`:
/// each cell moved to its column's new place, new columns empty.
fn rewrite<'a>(
    rows: impl Iterator<Item = &'a str>,
    old: &[&str],
    header: &[String],
    keep: impl Fn(&[&str]) -> bool,
) -> String {
    let mut out = format!("{}\n", header.join(","));
    for line in rows {
        let cells: Vec<&str> = line.split(',').collect();
        if !keep(&cells) {
            continue;
        }
        let row: Vec<&str> = header
            .iter()
            .map(|h| {
                old.iter()
                    .position(|c| c == h)
                    .and_then(|i| cells.get(i).copied())
                    .unwrap_or("")
            })
            .collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// A number as Python's `repr` writes it: the shortest text that reads back to the same
/// double, `nan` / `inf` / `-inf` for the others.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anvil-csv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("metrics.csv")
    }

    #[test]
    fn rows_fill_their_columns_and_leave_the_rest_empty() {
        let p = scratch("rows");
        let mut c = CsvLogger::create(&p, &["epoch", "step", "train/loss", "val/loss"]).unwrap();
        c.row(1, &[("epoch", 0.0), ("train/loss", 2.5)]).unwrap();
        c.row(2, &[("epoch", 0.0), ("val/loss", f64::NAN)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "epoch,step,train/loss,val/loss\n0,1,2.5,\n0,2,,nan\n"
        );
    }

    #[test]
    fn a_resume_drops_later_rows_and_keeps_old_columns() {
        let p = scratch("resume");
        std::fs::write(&p, "old,step,x\na,1,5\nb,2,4\nc,3,3\n").unwrap();
        let mut c = CsvLogger::resume(&p, &["step", "x", "y"], 2).unwrap();
        c.row(3, &[("y", 0.125)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "step,x,y,old\n1,5,,a\n2,4,,b\n3,,0.125,\n"
        );
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        let err = CsvLogger::resume(&p, &["step"], 2)
            .err()
            .expect("no step column");
        assert!(err.to_string().contains("no step column"), "{err}");
    }

    #[test]
    fn numbers_read_back_exactly() {
        for v in [0.1, 1e-5, 3.0, 123456.789, 1.0 / 3.0, 6.02e23] {
            assert_eq!(number(v).parse::<f64>().unwrap(), v);
        }
        assert_eq!(number(3.0), "3");
        assert_eq!(number(f64::INFINITY), "inf");
    }
}
