//! Embeddings computed by several worker processes (`coordinator embed --nodes N`,
//! `coordinator benchmark --nodes N`): worker `rank` of `of` embeds one contiguous range of
//! the file's cells and writes it as a part file; whoever needs the whole matrix reads the
//! parts back in order, checking that they cover every cell exactly once.
//!
//! A part file is `ANVILEMB` (8 bytes), then five little-endian u64 — cells in the file, first
//! cell, end cell, width, rank — then `(end - first) * width` little-endian f32. It is written
//! to a temporary name and renamed, so a part that exists is complete.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

const MAGIC: &[u8; 8] = b"ANVILEMB";
const HEADER: usize = 8 + 5 * 8;

/// One worker's share of a distributed embedding: rank `rank` of `of`, parts in `dir`.
#[derive(Debug, Clone)]
pub struct Part {
    pub rank: usize,
    pub of: usize,
    pub dir: PathBuf,
}

impl Part {
    /// Parses `R/N` (as `--part` takes it).
    pub fn parse(spec: &str, dir: PathBuf) -> anyhow::Result<Self> {
        let bad = || anyhow::anyhow!("--part {spec}: expected RANK/WORKERS, e.g. 0/2");
        let (r, n) = spec.split_once('/').ok_or_else(bad)?;
        let (rank, of) = (
            r.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if of == 0 || rank >= of {
            bail!("--part {spec}: the rank must be below the number of workers");
        }
        Ok(Part { rank, of, dir })
    }

    /// The cells (file order) this part embeds out of `n`: contiguous, sizes differing by at
    /// most one, earlier ranks taking the remainder.
    pub fn cells(&self, n: u64) -> Range<u64> {
        cell_range(n, self.rank, self.of)
    }
}

/// Cells `rank` of `of` embeds out of `n` (see [`Part::cells`]).
pub fn cell_range(n: u64, rank: usize, of: usize) -> Range<u64> {
    let (of, rank) = (of as u64, rank as u64);
    let (base, extra) = (n / of, n % of);
    let start = rank * base + rank.min(extra);
    start..start + base + u64::from(rank < extra)
}

/// The part file of `rank` in `dir`.
pub fn part_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("part-{rank:05}.emb"))
}

/// Writes part `part` (cells `cells` of a file of `n`, `values` row-major of width `dim`).
pub fn write(
    part: &Part,
    n: u64,
    cells: Range<u64>,
    dim: usize,
    values: &[f32],
) -> anyhow::Result<PathBuf> {
    let rows = (cells.end - cells.start) as usize;
    if values.len() != rows * dim {
        bail!("{} values for {rows} cells of width {dim}", values.len());
    }
    let path = part_path(&part.dir, part.rank);
    let tmp = part
        .dir
        .join(format!(".part-{:05}.tmp-{}", part.rank, std::process::id()));
    let mut bytes = Vec::with_capacity(HEADER + values.len() * 4);
    bytes.extend_from_slice(MAGIC);
    for v in [n, cells.start, cells.end, dim as u64, part.rank as u64] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// Reads the `of` parts in `dir` back into one row-major matrix of every cell, file order:
/// (values, cells, width). Fails naming the part that is missing, foreign or inconsistent.
pub fn read_all(dir: &Path, of: usize) -> anyhow::Result<(Vec<f32>, usize, usize)> {
    let mut out = Vec::new();
    let mut expect: Option<(u64, u64)> = None; // (cells, width)
    let mut next = 0u64;
    for rank in 0..of {
        let path = part_path(dir, rank);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("embedding part {rank} of {of}: {}", path.display()))?;
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            bail!("{}: not an anvil embedding part", path.display());
        }
        let field = |i: usize| {
            u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"))
        };
        let (n, start, end, dim, r) = (field(0), field(1), field(2), field(3), field(4));
        if r != rank as u64 {
            bail!("{}: holds part {r}, expected {rank}", path.display());
        }
        if let Some((en, ed)) = expect {
            if (n, dim) != (en, ed) {
                bail!(
                    "{}: {n} cells of width {dim}, but part 0 has {en} cells of width {ed}",
                    path.display()
                );
            }
        }
        expect = Some((n, dim));
        if start != next || end < start || end > n {
            bail!(
                "{}: cells {start}..{end}, expected the range starting at {next} of {n}",
                path.display()
            );
        }
        let len = ((end - start) * dim) as usize;
        if bytes.len() != HEADER + 4 * len {
            bail!(
                "{}: {} bytes, expected {} for {} cells of width {dim}",
                path.display(),
                bytes.len(),
                HEADER + 4 * len,
                end - start
            );
        }
        out.extend(
            bytes[HEADER..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        next = end;
    }
    let Some((n, dim)) = expect else {
        bail!("no embedding parts to read (0 workers)");
    };
    if next != n {
        bail!(
            "the {of} embedding parts in {} cover cells 0..{next} of {n}",
            dir.display()
        );
    }
    Ok((out, n as usize, dim as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_cell_once_in_order() {
        for n in [0u64, 1, 2, 7, 700, 701] {
            for of in 1..=5 {
                let mut next = 0;
                for rank in 0..of {
                    let r = cell_range(n, rank, of);
                    assert_eq!(r.start, next, "n {n} of {of} rank {rank}");
                    assert!(r.end - r.start <= n.div_ceil(of as u64));
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(cell_range(7, 0, 3), 0..3);
        assert_eq!(cell_range(7, 2, 3), 5..7);
    }

    #[test]
    fn parts_round_trip_and_gaps_are_named() {
        let dir = std::env::temp_dir().join(format!("anvil-embparts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (n, dim, of) = (5u64, 3usize, 2usize);
        let all: Vec<f32> = (0..n as usize * dim)
            .map(|i| i as f32 * 0.5 - 1.0)
            .collect();
        for rank in 0..of {
            let p = Part::parse(&format!("{rank}/{of}"), dir.clone()).unwrap();
            let c = p.cells(n);
            let v = &all[c.start as usize * dim..c.end as usize * dim];
            write(&p, n, c, dim, v).unwrap();
        }
        let (v, cells, width) = read_all(&dir, of).unwrap();
        assert_eq!((cells, width), (5, 3));
        assert_eq!(v, all);
        // Asking for three parts names the missing one.
        let e = format!("{:#}", read_all(&dir, 3).unwrap_err());
        assert!(e.contains("part 2 of 3"), "{e}");
        // A part that does not cover its range is refused.
        std::fs::remove_file(part_path(&dir, 1)).unwrap();
        let p = Part::parse("1/2", dir.clone()).unwrap();
        write(&p, n, 4..5, dim, &all[12..15]).unwrap();
        let e = format!("{:#}", read_all(&dir, 2).unwrap_err());
        assert!(e.contains("expected the range starting at 3"), "{e}");
        assert!(Part::parse("2/2", dir.clone()).is_err());
        assert!(Part::parse("x", dir.clone()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
