//! Deterministic synthetic AnnData: negative-binomial counts with cell types.
//!
//! Gene g has a base mean mu_g = alpha * exp(1.5 * z_g), z_g standard normal, with alpha
//! chosen so that on average a fraction `density` of genes is expressed per cell. Each of
//! `n_types` cell types up-regulates its own 5% of genes by a factor of 4–8. Cell c of type t
//! with size factor s_c (log-normal, sigma 0.3) draws count ~ NB(mean s_c * mu_{t,g},
//! dispersion r = 2) for every gene, sampled sparsely (zero test first, then the positive
//! part by CDF inversion). Every number derives from (seed, cell, gene) through the
//! counter-based generator, so a file is reproducible bit for bit.

use std::path::Path;

use crate::anndata::ObsColumn;
use crate::error::{DataError, Result};
use crate::rng::{CounterRng, Stream};
use crate::write::{write_h5ad, Compression, Row};

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub cells: usize,
    pub genes: usize,
    pub seed: u64,
    pub n_types: usize,
    /// Mean fraction of genes expressed per cell.
    pub density: f64,
    pub compression: Compression,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            cells: 1000,
            genes: 2000,
            seed: 0,
            n_types: 8,
            density: 0.1,
            compression: Compression::None,
        }
    }
}

const DISPERSION: f64 = 2.0;
const BLOCK: usize = 1024;

fn normal(rng: &mut CounterRng) -> f64 {
    // Box–Muller.
    let u1 = rng.next_f64().max(1e-300);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn p_zero(m: f64) -> f64 {
    (-DISPERSION * (m / DISPERSION).ln_1p()).exp()
}

struct Model {
    /// [n_types][genes] means.
    means: Vec<Vec<f64>>,
    seed: u64,
}

impl Model {
    fn new(o: &SynthOptions) -> Self {
        let mut rng = CounterRng::new(o.seed, Stream::Synth, &[u64::MAX]);
        let base: Vec<f64> = (0..o.genes)
            .map(|_| (1.5 * normal(&mut rng)).exp())
            .collect();
        // Bisection on alpha so the mean expressed fraction matches `density`.
        let frac = |a: f64| {
            base.iter().map(|&m| 1.0 - p_zero(a * m)).sum::<f64>() / base.len().max(1) as f64
        };
        let (mut lo, mut hi) = (1e-6f64, 1e3f64);
        for _ in 0..60 {
            let mid = (lo * hi).sqrt();
            if frac(mid) < o.density {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let alpha = (lo * hi).sqrt();
        let means = (0..o.n_types.max(1))
            .map(|t| {
                let mut r = CounterRng::new(o.seed, Stream::Synth, &[u64::MAX - 1, t as u64]);
                base.iter()
                    .map(|&m| {
                        let up = r.next_f64() < 0.05;
                        let f = if up { 4.0 + 4.0 * r.next_f64() } else { 1.0 };
                        alpha * m * f
                    })
                    .collect()
            })
            .collect();
        Model {
            means,
            seed: o.seed,
        }
    }

    fn cell_type(&self, cell: u64) -> usize {
        (CounterRng::new(self.seed, Stream::Synth, &[cell, 0]).below(self.means.len() as u64))
            as usize
    }

    fn row(&self, cell: u64) -> Row {
        let t = self.cell_type(cell);
        let mut rng = CounterRng::new(self.seed, Stream::Synth, &[cell, 1]);
        let s = (0.3 * normal(&mut rng)).exp();
        let (mut idx, mut val) = (Vec::new(), Vec::new());
        for (g, &mu) in self.means[t].iter().enumerate() {
            let m = s * mu;
            let p0 = p_zero(m);
            let u = rng.next_f64();
            if u < p0 {
                continue;
            }
            // Invert the NB CDF from k = 1 upward using the pmf recurrence.
            let q = m / (DISPERSION + m);
            let mut pmf = p0;
            let mut cdf = p0;
            let mut k = 0u32;
            loop {
                k += 1;
                pmf *= (k as f64 - 1.0 + DISPERSION) / k as f64 * q;
                cdf += pmf;
                if u < cdf || k > 100_000 || pmf < 1e-300 {
                    break;
                }
            }
            idx.push(g as u32);
            val.push(k as f32);
        }
        (idx, val)
    }
}

/// Write a synthetic dataset to `path` (.h5ad, CSR, float32 counts).
pub fn synth_h5ad(path: &Path, o: &SynthOptions) -> Result<()> {
    if o.cells == 0 || o.genes == 0 {
        return Err(DataError::Config(
            "synth needs at least one cell and one gene".into(),
        ));
    }
    if !(o.density > 0.0 && o.density < 1.0) {
        return Err(DataError::Config(format!(
            "density must be in (0, 1), got {}",
            o.density
        )));
    }
    let model = Model::new(o);
    let var_names: Vec<String> = (0..o.genes).map(|g| format!("GENE{g:05}")).collect();
    let obs_names: Vec<String> = (0..o.cells).map(|c| format!("cell{c}")).collect();
    let types: Vec<i32> = (0..o.cells as u64)
        .map(|c| model.cell_type(c) as i32)
        .collect();
    let categories: Vec<String> = (0..model.means.len())
        .map(|t| format!("type_{t}"))
        .collect();
    // X is streamed; per-cell totals are collected on the way and added to obs afterwards.
    let totals = std::sync::Mutex::new(vec![0f64; o.cells]);
    let n_genes = std::sync::Mutex::new(vec![0f64; o.cells]);
    let blocks = (0..o.cells).step_by(BLOCK).map(|start| {
        let end = (start + BLOCK).min(o.cells);
        let rows = gen_rows(&model, start, end);
        if let (Ok(mut t), Ok(mut n)) = (totals.lock(), n_genes.lock()) {
            for (i, (idx, v)) in rows.iter().enumerate() {
                t[start + i] = v.iter().map(|&x| x as f64).sum();
                n[start + i] = idx.len() as f64;
            }
        }
        Ok(rows)
    });
    let tmp = path.with_extension("h5ad.partial");
    let obs_placeholder = vec![(
        "cell_type".to_string(),
        ObsColumn::Categorical {
            codes: types.clone(),
            categories: categories.clone(),
        },
    )];
    write_h5ad(
        &tmp,
        &var_names,
        &obs_names,
        &obs_placeholder,
        blocks,
        o.compression,
    )?;
    let totals = totals.into_inner().unwrap_or_default();
    let n_genes = n_genes.into_inner().unwrap_or_default();
    append_obs_numbers(&tmp, &[("n_counts", totals), ("n_genes", n_genes)])?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

fn gen_rows(model: &Model, start: usize, end: usize) -> Vec<Row> {
    // Two threads: rows are independent and keyed by cell id.
    let mid = start + (end - start) / 2;
    std::thread::scope(|s| {
        let h = s.spawn(|| (mid..end).map(|c| model.row(c as u64)).collect::<Vec<_>>());
        let mut a: Vec<Row> = (start..mid).map(|c| model.row(c as u64)).collect();
        match h.join() {
            Ok(b) => a.extend(b),
            Err(_) => a.extend((mid..end).map(|c| model.row(c as u64))),
        }
        a
    })
}

fn append_obs_numbers(path: &Path, cols: &[(&str, Vec<f64>)]) -> Result<()> {
    let err = |o: &str| {
        let p = path.to_path_buf();
        let o = o.to_string();
        move |source| DataError::Hdf5 {
            path: p,
            object: o,
            source,
        }
    };
    let file = hdf5::File::open_rw(path).map_err(err("file"))?;
    let obs = file.group("obs").map_err(err("obs"))?;
    let mut order: Vec<String> = vec!["cell_type".into()];
    for (name, v) in cols {
        let ds = obs
            .new_dataset_builder()
            .with_data(&v[..])
            .create(*name)
            .map_err(err(name))?;
        for (k, val) in [("encoding-type", "array"), ("encoding-version", "0.2.0")] {
            let s: hdf5::types::VarLenUnicode =
                val.parse().map_err(|_| DataError::Config("attr".into()))?;
            ds.new_attr::<hdf5::types::VarLenUnicode>()
                .create(k)
                .and_then(|a| a.write_scalar(&s))
                .map_err(err(k))?;
        }
        order.push(name.to_string());
    }
    obs.delete_attr("column-order")
        .map_err(err("obs column-order"))?;
    let names: Vec<hdf5::types::VarLenUnicode> = order
        .iter()
        .map(|s| s.parse().map_err(|_| DataError::Config("attr".into())))
        .collect::<Result<_>>()?;
    obs.new_attr_builder()
        .with_data(&names[..])
        .create("column-order")
        .map_err(err("obs column-order"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anndata;

    #[test]
    fn synth_roundtrip_and_deterministic() {
        let dir = std::env::temp_dir().join(format!("anvil-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let o = SynthOptions {
            cells: 300,
            genes: 500,
            seed: 3,
            ..Default::default()
        };
        let a = dir.join("a.h5ad");
        let b = dir.join("b.h5ad");
        synth_h5ad(&a, &o).unwrap();
        synth_h5ad(&b, &o).unwrap();
        let ra = anndata::open(&a).unwrap();
        let rb = anndata::open(&b).unwrap();
        assert_eq!(ra.n_obs(), 300);
        assert_eq!(ra.n_vars(), 500);
        let xa = ra.read_rows(0, 300).unwrap();
        assert_eq!(xa, rb.read_rows(0, 300).unwrap());
        let density = xa.data.len() as f64 / (300.0 * 500.0);
        assert!((density - 0.1).abs() < 0.03, "{density}");
        let ct = ra.obs_column("cell_type").unwrap();
        assert!(
            matches!(ct, ObsColumn::Categorical { ref categories, .. } if categories.len() == 8)
        );
        let n = ra.obs_column("n_counts").unwrap();
        let ObsColumn::Numeric(n) = n else { panic!() };
        let (_, v) = xa.row(5);
        assert_eq!(n[5], v.iter().map(|&x| x as f64).sum::<f64>());
        std::fs::remove_dir_all(&dir).ok();
    }
}
