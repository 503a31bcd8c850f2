//! Offline preprocessing of one .h5ad file into a new one (`coordinator preprocess`, as
//! scModelForge's `preprocess`): library-size normalization, log1p and highly-variable-gene
//! selection applied to X with the same arithmetic as training's on-the-fly preprocessing
//! ([`crate::preprocess`]), the genes restricted to the highly variable ones.
//!
//! What scanpy keeps, this keeps: `obs`, `obsm`, `obsp`, `uns`, `raw` and any other member are
//! copied as they are; `var`, `varm`, `varp` and `layers` too when every gene stays. With highly variable genes `var` is
//! rewritten for the kept genes, with scanpy's `highly_variable`, `means`, `dispersions` and
//! `dispersions_norm` columns; `varm`, `varp` and `layers` are then not carried, and the
//! summary says so. `uns["log1p"]` and `uns["hvg"]` are recorded as scanpy records them.
//! The output is written under a temporary name and renamed when complete.

use std::path::{Path, PathBuf};

use configs::scmodelforge::PreprocessingConfig;
use hdf5::File;

use crate::anndata::{AnnDataReader, CsrRows, H5adReader, ObsColumn};
use crate::dataset::{CellBlock, Dataset};
use crate::error::{DataError, Result};
use crate::preprocess::{HvgTable, Preprocessor};
use crate::vocab::{GeneVocab, N_SPECIAL};
use crate::write::{write_csr_x, Compression, H5Out, Row};

/// Cells per block while X is rewritten.
const BLOCK: usize = 1024;

/// What [`preprocess_h5ad`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessSummary {
    pub n_obs: usize,
    pub n_vars_in: usize,
    pub n_vars_out: usize,
    /// The library size every cell was scaled to (None: not normalized).
    pub target_sum: Option<f32>,
    pub log1p: bool,
    /// Parts of the input that the output does not have, each with the reason.
    pub not_carried: Vec<String>,
    /// Things the user should know (input already log-transformed, ...).
    pub warnings: Vec<String>,
}

/// Preprocess `input` (.h5ad) as `cfg` says and write the result to `output`, which must not
/// exist. `progress(done, total)` is called after each block of cells.
pub fn preprocess_h5ad(
    input: &Path,
    output: &Path,
    cfg: &PreprocessingConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<PreprocessSummary> {
    if input.is_dir() {
        return Err(DataError::NotAnnData {
            path: input.to_path_buf(),
            detail: "is a directory (a zarr store?); preprocess reads .h5ad files".into(),
        });
    }
    if output.exists() {
        return Err(DataError::invalid(
            output,
            "output",
            "already exists; remove it or choose another output path (nothing was written)",
        ));
    }
    let reader = H5adReader::open(input)?;
    let var_names = reader.var_names().to_vec();
    let var_columns = reader.var_columns()?;
    let vocab = GeneVocab::from_genes(var_names.iter().cloned());
    if vocab.n_genes() != var_names.len() {
        let mut seen = std::collections::HashSet::new();
        let dup = var_names.iter().find(|g| !seen.insert(g.as_str()));
        return Err(DataError::invalid(
            input,
            "var",
            format!(
                "gene names are not unique ({} appears more than once); make them unique (anndata's var_names_make_unique) first",
                dup.map(String::as_str).unwrap_or("?")
            ),
        ));
    }
    let n_obs = reader.n_obs();
    let dataset = Dataset::new(vec![Box::new(reader)], vocab);
    let (pre, hvg) = Preprocessor::build_with_hvg(cfg, &dataset)?;

    // Token id of column c is c + N_SPECIAL; the output column of a kept gene is its rank.
    let keep: Vec<bool> = match &pre.keep {
        Some(k) => k[N_SPECIAL as usize..].to_vec(),
        None => vec![true; var_names.len()],
    };
    let mut out_col = vec![u32::MAX; var_names.len()];
    let mut n_out = 0u32;
    for (c, &k) in keep.iter().enumerate() {
        if k {
            out_col[c] = n_out;
            n_out += 1;
        }
    }

    let tmp = partial_path(output);
    let written = write_output(
        input,
        &tmp,
        &dataset,
        &pre,
        &keep,
        &out_col,
        hvg.as_ref(),
        &var_names,
        var_columns,
        &mut progress,
    );
    let (not_carried, warnings) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, output).map_err(|e| DataError::io(output, e))?;
    Ok(PreprocessSummary {
        n_obs,
        n_vars_in: var_names.len(),
        n_vars_out: n_out as usize,
        target_sum: pre.target_sum,
        log1p: pre.log1p,
        not_carried,
        warnings,
    })
}

fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output.h5ad".into());
    output.with_file_name(format!(".{name}.partial"))
}

#[allow(clippy::too_many_arguments)]
fn write_output(
    input: &Path,
    tmp: &Path,
    dataset: &Dataset,
    pre: &Preprocessor,
    keep: &[bool],
    out_col: &[u32],
    hvg: Option<&HvgTable>,
    var_names: &[String],
    var_columns: Vec<(String, Result<ObsColumn>)>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<String>, Vec<String>)> {
    let out = H5Out {
        path: tmp.to_path_buf(),
    };
    let src = File::open(input).map_err(|source| DataError::Hdf5 {
        path: input.to_path_buf(),
        object: "file".into(),
        source,
    })?;
    if !src.link_exists("obs") {
        return Err(DataError::invalid(
            input,
            "obs",
            "no obs dataframe in this file",
        ));
    }
    let file = File::create(tmp).map_err(out.err("file"))?;
    out.encoding(&file, "anndata", "0.1.0")?;

    let n_obs = dataset.n_cells() as usize;
    let mut done = 0usize;
    let (mut block, mut rows) = (CellBlock::default(), CsrRows::default());
    let blocks = std::iter::from_fn(|| {
        if done >= n_obs {
            return None;
        }
        let end = (done + BLOCK).min(n_obs);
        let result = dataset
            .read_file_rows_into(0, done, end, &mut block, &mut rows)
            .map(|()| {
                (0..block.len())
                    .map(|i| {
                        let (_, genes, raw) = block.cell(i);
                        let (mut g, mut v) = (Vec::new(), Vec::new());
                        pre.apply(genes, raw, &mut g, &mut v);
                        let cols = g
                            .iter()
                            .map(|&id| out_col[(id - N_SPECIAL) as usize])
                            .collect();
                        (cols, v)
                    })
                    .collect::<Vec<Row>>()
            });
        done = end;
        progress(done, n_obs);
        Some(result)
    });
    let n_kept = keep.iter().filter(|&&k| k).count();
    write_csr_x(&out, &file, n_kept, blocks, Compression::None)?;

    let mut not_carried = Vec::new();
    let mut warnings = Vec::new();
    let every_gene = n_kept == var_names.len();
    // Indexed by the input's genes: rewritten (var) or left out when genes are dropped.
    let by_gene = ["var", "varm", "varp", "layers"];
    let members = src.member_names().map_err(|source| DataError::Hdf5 {
        path: input.to_path_buf(),
        object: "/".into(),
        source,
    })?;
    // Everything else (obs, obsm, obsp, uns, raw, ...) is carried as it is.
    for name in &members {
        if name == "X" || (!every_gene && by_gene.contains(&name.as_str())) {
            continue;
        }
        copy_member(&src, &file, name, input, &out)?;
    }
    for name in ["obsm", "obsp", "uns", "layers", "varm", "varp"] {
        if !file.link_exists(name) {
            out.dict(&file, name)?;
        }
    }
    if !every_gene {
        for name in ["varm", "varp", "layers"] {
            let members = src
                .group(name)
                .and_then(|g| g.member_names())
                .unwrap_or_default();
            if !members.is_empty() {
                not_carried.push(format!(
                    "{name} ({}): they are indexed by the input's genes, which highly variable gene selection subsets",
                    members.join(", ")
                ));
            }
        }
        let (index, columns) = subset_var(var_names, keep, var_columns, hvg, &mut not_carried);
        let var = file.create_group("var").map_err(out.err("var"))?;
        out.dataframe(&var, &index, &columns)?;
    }

    let uns = file.group("uns").map_err(out.err("uns"))?;
    if pre.log1p {
        if uns.link_exists("log1p") {
            warnings.push(
                "the input's uns has \"log1p\": it looks log-transformed already, and was log-transformed again (as scanpy does)".into(),
            );
        } else {
            out.dict(&uns, "log1p")?;
        }
    }
    if hvg.is_some() {
        if uns.link_exists("hvg") {
            uns.unlink("hvg").map_err(out.err("uns/hvg"))?;
        }
        let g = out.dict(&uns, "hvg")?;
        let flavor = "seurat"
            .parse::<hdf5::types::VarLenUnicode>()
            .map_err(|e| DataError::invalid(tmp, "uns/hvg/flavor", e.to_string()))?;
        let ds = g
            .new_dataset::<hdf5::types::VarLenUnicode>()
            .create("flavor")
            .map_err(out.err("uns/hvg/flavor"))?;
        ds.write_scalar(&flavor)
            .map_err(out.err("uns/hvg/flavor"))?;
        out.encoding(&ds, "string", "0.2.0")?;
    }
    file.flush().map_err(out.err("file"))?;
    Ok((not_carried, warnings))
}

/// Copy the top-level member `name` (group or dataset) of `src` into `dst`.
fn copy_member(src: &File, dst: &File, name: &str, input: &Path, out: &H5Out) -> Result<()> {
    let read_err = |source| DataError::Hdf5 {
        path: input.to_path_buf(),
        object: name.to_string(),
        source,
    };
    match src.group(name) {
        Ok(g) => g.copy_to(dst, name).map_err(out.err(name)),
        Err(_) => src
            .dataset(name)
            .map_err(read_err)?
            .copy_to(dst, name)
            .map_err(out.err(name)),
    }
}

/// The var dataframe restricted to the kept genes: the input's columns that decode, then
/// scanpy's highly-variable-gene columns (replacing same-named input columns).
fn subset_var(
    var_names: &[String],
    keep: &[bool],
    var_columns: Vec<(String, Result<ObsColumn>)>,
    hvg: Option<&HvgTable>,
    not_carried: &mut Vec<String>,
) -> (Vec<String>, Vec<(String, ObsColumn)>) {
    fn pick<T: Clone>(v: &[T], keep: &[bool]) -> Vec<T> {
        v.iter()
            .zip(keep)
            .filter(|(_, &k)| k)
            .map(|(x, _)| x.clone())
            .collect()
    }
    const HVG_COLUMNS: [&str; 4] = [
        "highly_variable",
        "means",
        "dispersions",
        "dispersions_norm",
    ];
    let mut columns = Vec::new();
    for (name, col) in var_columns {
        if hvg.is_some() && HVG_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        match col {
            Ok(ObsColumn::Categorical { codes, categories }) => columns.push((
                name,
                ObsColumn::Categorical {
                    codes: pick(&codes, keep),
                    categories,
                },
            )),
            Ok(ObsColumn::String(v)) => columns.push((name, ObsColumn::String(pick(&v, keep)))),
            Ok(ObsColumn::Numeric(v)) => columns.push((name, ObsColumn::Numeric(pick(&v, keep)))),
            Ok(ObsColumn::Boolean(v)) => columns.push((name, ObsColumn::Boolean(pick(&v, keep)))),
            Err(e) => not_carried.push(format!("var column {name}: {e}")),
        }
    }
    if let Some(t) = hvg {
        columns.push((
            "highly_variable".into(),
            ObsColumn::Boolean(pick(&t.highly_variable, keep)),
        ));
        columns.push(("means".into(), ObsColumn::Numeric(pick(&t.means, keep))));
        columns.push((
            "dispersions".into(),
            ObsColumn::Numeric(pick(&t.dispersions, keep)),
        ));
        columns.push((
            "dispersions_norm".into(),
            ObsColumn::Numeric(pick(&t.dispersions_norm, keep)),
        ));
    }
    (pick(var_names, keep), columns)
}
