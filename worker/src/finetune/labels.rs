//! Task labels from `obs[finetune.label_key]` of every data file, one per global cell id:
//! class indices (categorical, string or boolean columns; classes sorted by name, as
//! scModelForge's LabelEncoder orders them) or regression targets (numeric columns).

use configs::scmodelforge::{FinetuneConfig, HeadTask};
use data::anndata::ObsColumn;
use data::dataset::Dataset;

/// The labels of every cell of a dataset, indexed by global cell id.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    Classes {
        names: Vec<String>,
        of_cell: Vec<u32>,
    },
    Values(Vec<f32>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Classes { of_cell, .. } => of_cell.len(),
            Labels::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads `obs[ft.label_key]` of every file of `dataset` as `ft.head.task` needs it. Errors
/// name the key, the file and what is wrong (a missing column lists the columns there are).
pub fn read(dataset: &Dataset, ft: &FinetuneConfig) -> Result<Labels, String> {
    let key = &ft.label_key;
    let mut columns = Vec::new();
    for f in dataset.files() {
        let path = f.path().display().to_string();
        let available = f
            .obs_columns()
            .map_err(|e| format!("finetune.label_key: reading obs of {path}: {e}"))?;
        if !available.iter().any(|(n, _)| n == key) {
            let list: Vec<String> = available
                .iter()
                .map(|(n, k)| format!("{n} ({k})"))
                .collect();
            return Err(format!(
                "finetune.label_key: {path} has no obs column {key:?}; its obs columns are: {}",
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            ));
        }
        let col = f
            .obs_column(key)
            .map_err(|e| format!("finetune.label_key: reading obs/{key} of {path}: {e}"))?;
        if col.len() != f.n_obs() {
            return Err(format!(
                "finetune.label_key: obs/{key} of {path} has {} values for {} cells",
                col.len(),
                f.n_obs()
            ));
        }
        columns.push((path, col));
    }
    match ft.head.task {
        HeadTask::Classification => classes(key, columns),
        HeadTask::Regression => values(key, columns),
    }
}

fn classes(key: &str, columns: Vec<(String, ObsColumn)>) -> Result<Labels, String> {
    let mut text: Vec<String> = Vec::new();
    for (path, col) in columns {
        match col {
            ObsColumn::Categorical { codes, categories } => {
                if let Some(row) = codes.iter().position(|&c| c < 0) {
                    let missing = codes.iter().filter(|&&c| c < 0).count();
                    return Err(format!(
                        "finetune.label_key: obs/{key} of {path} has {missing} cell(s) without a label (missing category, first at row {row}); every cell needs a class: drop those cells or give them one"
                    ));
                }
                text.extend(
                    codes
                        .iter()
                        .map(|&c| categories.get(c as usize).cloned().unwrap_or_default()),
                );
            }
            ObsColumn::String(v) => text.extend(v),
            ObsColumn::Boolean(v) => text.extend(v.iter().map(|b| b.to_string())),
            ObsColumn::Numeric(_) => {
                return Err(format!(
                    "finetune.label_key: obs/{key} of {path} is numeric, but finetune.head.task is classification, which needs a categorical or string column of class names (e.g. cell types); for a numeric target set finetune.head.task: regression"
                ));
            }
        }
    }
    let mut names = text.clone();
    names.sort();
    names.dedup();
    let of_cell = text
        .iter()
        .map(|t| names.binary_search(t).unwrap_or(0) as u32)
        .collect();
    Ok(Labels::Classes { names, of_cell })
}

fn values(key: &str, columns: Vec<(String, ObsColumn)>) -> Result<Labels, String> {
    let mut out = Vec::new();
    for (path, col) in columns {
        let kind = match &col {
            ObsColumn::Categorical { .. } => "categorical",
            ObsColumn::String(_) => "a string column",
            ObsColumn::Boolean(_) => "boolean",
            ObsColumn::Numeric(_) => "",
        };
        let ObsColumn::Numeric(v) = col else {
            return Err(format!(
                "finetune.label_key: obs/{key} of {path} is {kind}, but finetune.head.task is regression, which needs a numeric column; for class labels set finetune.head.task: classification"
            ));
        };
        if let Some(row) = v.iter().position(|x| !x.is_finite()) {
            let bad = v.iter().filter(|x| !x.is_finite()).count();
            return Err(format!(
                "finetune.label_key: obs/{key} of {path} has {bad} NaN or infinite value(s) (first at row {row}: {}); regression targets must be finite: drop those cells or fill them in",
                v[row]
            ));
        }
        out.extend(v.iter().map(|&x| x as f32));
    }
    Ok(Labels::Values(out))
}
