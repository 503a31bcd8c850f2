//! Gene vocabulary. Ids 0..4 are special tokens; genes follow from 4 in the vocabulary's order.
//!
//! `data.gene_vocab` is either a path to a vocabulary file or a name. A file is one of:
//! - text: one gene per line (blank lines and lines starting with `#` skipped);
//! - JSON array of gene names;
//! - JSON object `{"genes": [...]}` (what [`GeneVocab::save`] writes as vocab.json);
//! - JSON object mapping gene name to integer id (e.g. a Geneformer token dictionary): genes are
//!   taken in ascending id order and renumbered from 4; special-token names are skipped.
//!
//! A name that is not an existing file (such as the default "human_protein_coding") means: build
//! the vocabulary from the union of the datasets' gene names, sorted by byte order, so the ids do
//! not depend on the order of `data.paths`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

pub const PAD: u32 = 0;
pub const UNK: u32 = 1;
pub const MASK: u32 = 2;
pub const CLS: u32 = 3;
/// Number of special tokens; the first gene has this id.
pub const N_SPECIAL: u32 = 4;
pub const SPECIAL_TOKENS: [&str; 4] = ["[PAD]", "[UNK]", "[MASK]", "[CLS]"];

#[derive(Debug, Clone, PartialEq)]
pub struct GeneVocab {
    genes: Vec<String>,
    index: HashMap<String, u32>,
}

#[derive(Serialize, Deserialize)]
struct VocabFile {
    special_tokens: Vec<String>,
    genes: Vec<String>,
}

fn is_special_name(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    SPECIAL_TOKENS.iter().any(|t| t.eq_ignore_ascii_case(s))
        || matches!(
            l.as_str(),
            "<pad>" | "<unk>" | "<mask>" | "<cls>" | "<eos>" | "<bos>" | "<sep>" | "[sep]"
        )
}

impl GeneVocab {
    /// A vocabulary of these genes in this order; duplicates keep their first id.
    pub fn from_genes<I, S>(genes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut v = GeneVocab {
            genes: Vec::new(),
            index: HashMap::new(),
        };
        for g in genes {
            let g = g.into();
            if !v.index.contains_key(&g) {
                v.index.insert(g.clone(), N_SPECIAL + v.genes.len() as u32);
                v.genes.push(g);
            }
        }
        v
    }

    /// The union of several gene lists, sorted.
    pub fn from_union<'a, I>(lists: I) -> Self
    where
        I: IntoIterator<Item = &'a [String]>,
    {
        let set: BTreeSet<&str> = lists.into_iter().flatten().map(|s| s.as_str()).collect();
        Self::from_genes(set)
    }

    /// Total ids including special tokens.
    pub fn len(&self) -> usize {
        N_SPECIAL as usize + self.genes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.genes.is_empty()
    }

    pub fn n_genes(&self) -> usize {
        self.genes.len()
    }

    pub fn genes(&self) -> &[String] {
        &self.genes
    }

    /// The id of a gene, or [`UNK`].
    pub fn id(&self, gene: &str) -> u32 {
        self.index.get(gene).copied().unwrap_or(UNK)
    }

    pub fn get(&self, gene: &str) -> Option<u32> {
        self.index.get(gene).copied()
    }

    /// The token string of an id.
    pub fn token(&self, id: u32) -> Option<&str> {
        if id < N_SPECIAL {
            Some(SPECIAL_TOKENS[id as usize])
        } else {
            self.genes
                .get((id - N_SPECIAL) as usize)
                .map(|s| s.as_str())
        }
    }

    /// Load a vocabulary file (see the module docs for the accepted formats).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let trimmed = text.trim_start();
        let looks_json = trimmed.starts_with('[') || trimmed.starts_with('{');
        if !looks_json {
            let genes = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter(|l| !is_special_name(l));
            let v = Self::from_genes(genes);
            return if v.is_empty() {
                Err(DataError::invalid(path, "vocabulary", "contains no genes"))
            } else {
                Ok(v)
            };
        }
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| DataError::invalid(path, "vocabulary", format!("invalid JSON: {e}")))?;
        let bad = |what: &str| DataError::invalid(path, "vocabulary", what.to_string());
        let genes: Vec<String> = match value {
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(bad("JSON array must contain only gene-name strings")),
                })
                .collect::<Result<_>>()?,
            serde_json::Value::Object(map) => {
                if let Some(g) = map.get("genes") {
                    let arr = g
                        .as_array()
                        .ok_or_else(|| bad("\"genes\" must be an array of strings"))?;
                    arr.iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| bad("\"genes\" must be an array of strings"))
                        })
                        .collect::<Result<_>>()?
                } else {
                    let mut pairs = Vec::with_capacity(map.len());
                    for (k, v) in map {
                        let id = v.as_i64().ok_or_else(|| {
                            bad("JSON object must map gene names to integer ids, or have a \"genes\" list")
                        })?;
                        pairs.push((id, k));
                    }
                    pairs.sort();
                    pairs.into_iter().map(|(_, k)| k).collect()
                }
            }
            _ => return Err(bad("expected a JSON array or object")),
        };
        let v = Self::from_genes(genes.into_iter().filter(|g| !is_special_name(g)));
        if v.is_empty() {
            return Err(bad("contains no genes"));
        }
        Ok(v)
    }

    /// Write vocab.json: `{"special_tokens": [...], "genes": [...]}`; gene i has id 4 + i.
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = VocabFile {
            special_tokens: SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
            genes: self.genes.clone(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| DataError::Config(format!("serializing vocabulary: {e}")))?;
        std::fs::write(path, text).map_err(|e| DataError::io(path, e))
    }

    /// `gene_vocab` from the config: a file path, or a name meaning "build from the data".
    pub fn resolve(gene_vocab: &str, var_names: &[&[String]]) -> Result<Self> {
        let p = Path::new(gene_vocab);
        if p.is_file() {
            let v = Self::load(p)?;
            tracing::info!(
                "gene vocabulary: {} genes from {}",
                v.n_genes(),
                p.display()
            );
            return Ok(v);
        }
        let v = Self::from_union(var_names.iter().copied());
        tracing::info!(
            "gene vocabulary '{gene_vocab}' is not a file: built from the union of the datasets' genes ({} genes, sorted by name)",
            v.n_genes()
        );
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_specials() {
        let v = GeneVocab::from_genes(["B", "A", "B"]);
        assert_eq!(v.len(), 6);
        assert_eq!(v.id("B"), 4);
        assert_eq!(v.id("A"), 5);
        assert_eq!(v.id("nope"), UNK);
        assert_eq!(v.token(CLS), Some("[CLS]"));
        assert_eq!(v.token(5), Some("A"));
    }

    #[test]
    fn union_is_sorted_and_order_free() {
        let a = vec!["TP53".to_string(), "ACTB".to_string()];
        let b = vec!["GAPDH".to_string(), "ACTB".to_string()];
        let v1 = GeneVocab::from_union([a.as_slice(), b.as_slice()]);
        let v2 = GeneVocab::from_union([b.as_slice(), a.as_slice()]);
        assert_eq!(v1, v2);
        assert_eq!(v1.genes(), &["ACTB", "GAPDH", "TP53"]);
    }

    #[test]
    fn save_load_roundtrip_and_formats() {
        let dir = std::env::temp_dir().join(format!("anvil-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v = GeneVocab::from_genes(["X", "Y", "Z"]);
        let p = dir.join("vocab.json");
        v.save(&p).unwrap();
        assert_eq!(GeneVocab::load(&p).unwrap(), v);

        let t = dir.join("genes.txt");
        std::fs::write(&t, "# header\nX\n\nY\nZ\n").unwrap();
        assert_eq!(GeneVocab::load(&t).unwrap(), v);

        let m = dir.join("dict.json");
        std::fs::write(&m, r#"{"<pad>": 0, "Z": 9, "X": 2, "Y": 3}"#).unwrap();
        assert_eq!(GeneVocab::load(&m).unwrap(), v);

        let a = dir.join("arr.json");
        std::fs::write(&a, r#"["X","Y","Z"]"#).unwrap();
        assert_eq!(GeneVocab::load(&a).unwrap(), v);

        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"X": "one"}"#).unwrap();
        let e = GeneVocab::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json"), "{e}");

        let r = GeneVocab::resolve(
            "human_protein_coding",
            &[&["B".to_string(), "A".to_string()]],
        )
        .unwrap();
        assert_eq!(r.genes(), &["A", "B"]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
