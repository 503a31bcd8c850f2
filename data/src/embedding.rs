//! Pretrained gene vectors for the `gene_embedding` tokenizer, aligned to the vocabulary.
//!
//! Accepted files:
//! - `.npy`: a 2-D float32/float64 C-order array, one row per gene; the gene names are in a
//!   text file beside it (one per line): `<stem>.genes.txt`, `<stem>_genes.txt`, `<stem>.txt`
//!   or `genes.txt`, first found.
//! - `.safetensors`: one 2-D F32/F64 tensor (named `embeddings`, `embedding` or `weight`, or
//!   the only tensor); gene names in the metadata key `genes` (a JSON array) or a text file
//!   beside it as for .npy.
//!
//! The table has one row per token id; special tokens and vocabulary genes absent from the
//! file get zero vectors (the latter are counted in [`GeneEmbedding::missing`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::vocab::{GeneVocab, N_SPECIAL};

#[derive(Debug, Clone, PartialEq)]
pub struct GeneEmbedding {
    pub dim: usize,
    /// Row-major [vocab.len(), dim].
    pub table: Vec<f32>,
    /// Vocabulary genes without a vector.
    pub missing: usize,
}

fn bad(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::invalid(path, "gene embedding", problem)
}

/// Parse a .npy file into (rows, cols, data).
pub fn read_npy(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, hstart) = if major == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        if bytes.len() < 12 {
            return Err(bad(path, "truncated .npy header"));
        }
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad(path, "truncated .npy header"))?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        if let Some(r) = rest.strip_prefix('(') {
            Some(r[..r.find(')')?].to_string())
        } else if let Some(r) = rest.strip_prefix('\'') {
            Some(r[..r.find('\'')?].to_string())
        } else {
            Some(
                rest[..rest.find(',').unwrap_or(rest.len())]
                    .trim()
                    .to_string(),
            )
        }
    };
    let descr = field("descr").ok_or_else(|| bad(path, "no 'descr' in .npy header"))?;
    if field("fortran_order").as_deref() == Some("True") {
        return Err(bad(
            path,
            "Fortran-order .npy arrays are not supported; save with C order",
        ));
    }
    let shape: Vec<usize> = field("shape")
        .ok_or_else(|| bad(path, "no 'shape' in .npy header"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("bad shape entry '{s}'")))
        })
        .collect::<Result<_>>()?;
    if shape.len() != 2 {
        return Err(bad(
            path,
            format!("expected a 2-D array, found shape {shape:?}"),
        ));
    }
    let data = &bytes[hstart + hlen..];
    let n = shape[0]
        .checked_mul(shape[1])
        .filter(|n| n.checked_mul(8).is_some())
        .ok_or_else(|| bad(path, format!("shape {shape:?} is too large")))?;
    let values: Vec<f32> = match descr.as_str() {
        "<f4" | "=f4" => {
            if data.len() < n * 4 {
                return Err(bad(path, "truncated .npy data"));
            }
            data[..n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" | "=f8" => {
            if data.len() < n * 8 {
                return Err(bad(path, "truncated .npy data"));
            }
            data[..n * 8]
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect()
        }
        other => {
            return Err(bad(
                path,
                format!("unsupported dtype '{other}'; use float32 or float64"),
            ))
        }
    };
    Ok((shape[0], shape[1], values))
}

fn gene_list_beside(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path.file_stem()?.to_string_lossy().to_string();
    [
        format!("{stem}.genes.txt"),
        format!("{stem}_genes.txt"),
        format!("{stem}.txt"),
        "genes.txt".to_string(),
    ]
    .into_iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

fn read_gene_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// (rows, cols, row-major values, gene names if the file carries them)
type Loaded = (usize, usize, Vec<f32>, Option<Vec<String>>);

fn read_safetensors(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let genes = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("genes"))
        .and_then(|g| serde_json::from_str::<Vec<String>>(g).ok());
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let name = ["embeddings", "embedding", "weight"]
        .iter()
        .map(|s| s.to_string())
        .find(|n| names.contains(n))
        .or_else(|| {
            if names.len() == 1 {
                names.first().cloned()
            } else {
                None
            }
        })
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "cannot tell which tensor holds the embeddings (tensors: {})",
                    names.join(", ")
                ),
            )
        })?;
    let t = st
        .tensor(&name)
        .map_err(|e| bad(path, format!("tensor '{name}': {e}")))?;
    let shape = t.shape().to_vec();
    if shape.len() != 2 {
        return Err(bad(
            path,
            format!("tensor '{name}' must be 2-D, found shape {shape:?}"),
        ));
    }
    let data = t.data();
    let values: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        other => {
            return Err(bad(
                path,
                format!("tensor '{name}' has dtype {other:?}; use F32 or F64"),
            ))
        }
    };
    Ok((shape[0], shape[1], values, genes))
}

impl GeneEmbedding {
    pub fn load(path: &Path, expected_dim: usize, vocab: &GeneVocab) -> Result<Self> {
        if !path.exists() {
            return Err(DataError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let (rows, dim, values, genes) = match ext.as_str() {
            "npy" => {
                let (r, d, v) = read_npy(path)?;
                (r, d, v, None)
            }
            "safetensors" => read_safetensors(path)?,
            _ => return Err(bad(
                path,
                "unknown embedding format; use .npy (with a gene list beside it) or .safetensors",
            )),
        };
        let genes = match genes {
            Some(g) => g,
            None => {
                let list = gene_list_beside(path).ok_or_else(|| {
                    bad(path, "no gene list found beside it (looked for <stem>.genes.txt, <stem>_genes.txt, <stem>.txt, genes.txt)")
                })?;
                read_gene_list(&list)?
            }
        };
        if dim != expected_dim {
            return Err(bad(
                path,
                format!(
                    "vectors have dimension {dim} but tokenizer.embedding_dim is {expected_dim}"
                ),
            ));
        }
        if genes.len() != rows {
            return Err(bad(
                path,
                format!("{rows} vectors but {} gene names", genes.len()),
            ));
        }
        let by_name: HashMap<&str, usize> = genes
            .iter()
            .enumerate()
            .map(|(i, g)| (g.as_str(), i))
            .collect();
        let mut table = vec![0f32; vocab.len() * dim];
        let mut missing = 0;
        for (i, g) in vocab.genes().iter().enumerate() {
            let id = N_SPECIAL as usize + i;
            match by_name.get(g.as_str()) {
                Some(&r) => {
                    table[id * dim..(id + 1) * dim].copy_from_slice(&values[r * dim..(r + 1) * dim])
                }
                None => missing += 1,
            }
        }
        if missing > 0 {
            tracing::warn!(
                "{}: {missing} vocabulary genes have no pretrained vector (zeros)",
                path.display()
            );
        }
        Ok(GeneEmbedding {
            dim,
            table,
            missing,
        })
    }

    /// The vector of a token id.
    pub fn vector(&self, id: u32) -> &[f32] {
        let i = id as usize * self.dim;
        &self.table[i..i + self.dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_npy_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) {
        let mut header =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn npy_and_safetensors() {
        let dir = std::env::temp_dir().join(format!("anvil-emb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vocab = GeneVocab::from_genes(["A", "B", "C"]);
        let npy = dir.join("vec.npy");
        write_npy_f32(&npy, 2, 3, &[1., 2., 3., 4., 5., 6.]);
        std::fs::write(dir.join("vec.genes.txt"), "C\nA\n").unwrap();
        let e = GeneEmbedding::load(&npy, 3, &vocab).unwrap();
        assert_eq!(e.vector(vocab.id("A")), &[4., 5., 6.]);
        assert_eq!(e.vector(vocab.id("C")), &[1., 2., 3.]);
        assert_eq!(e.vector(vocab.id("B")), &[0., 0., 0.]);
        assert_eq!(e.missing, 1);
        let err = GeneEmbedding::load(&npy, 200, &vocab)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dimension 3") && err.contains("vec.npy"),
            "{err}"
        );

        let st = dir.join("emb.safetensors");
        let data: Vec<u8> = [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data)
            .unwrap();
        let mut meta = HashMap::new();
        meta.insert("genes".to_string(), r#"["B","A"]"#.to_string());
        safetensors::serialize_to_file(vec![("embeddings", view)], Some(meta), &st).unwrap();
        let e = GeneEmbedding::load(&st, 2, &vocab).unwrap();
        assert_eq!(e.vector(vocab.id("B")), &[1., 2.]);
        assert_eq!(e.vector(vocab.id("A")), &[3., 4.]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
