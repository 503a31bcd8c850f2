//! What this build can train: config sections it cannot honour yet are refused at start, by
//! the coordinator before any worker starts and by `worker train`, never silently skipped.

use configs::ScModelForgeConfig;

/// The first section of `cfg` this build cannot train, as a message naming its key.
pub fn unsupported(cfg: &ScModelForgeConfig) -> Option<String> {
    if cfg.finetune.is_some() && cfg.data.shards.enabled {
        return Some(format!(
            "data.shards.enabled: fine-tuning reads its labels from obs/{}, which shard directories do not carry; fine-tune on the .h5ad files (data.paths) and set data.shards.enabled: false",
            cfg.finetune.as_ref().map(|f| f.label_key.as_str()).unwrap_or("?")
        ));
    }
    if cfg.eval.benchmarks.is_empty() {
        return None;
    }
    if let Some(why) = unsupported_benchmark(cfg) {
        return Some(why);
    }
    if cfg.data.shards.enabled {
        return Some(
            "eval.benchmarks: the in-training assessment needs the cells' labels, which shard directories do not carry; set eval.benchmarks: [] and benchmark a checkpoint on an .h5ad with `coordinator benchmark --data F`".into(),
        );
    }
    let files = cfg.data.paths.len();
    (files != 1).then(|| {
        format!(
            "eval.benchmarks: the in-training assessment (every eval.every_n_epochs epochs) embeds the cells of the one training file, but data.paths has {files} files; set eval.benchmarks: [] and benchmark a checkpoint on a file with `coordinator benchmark --data F`"
        )
    })
}

/// Benchmarks `coordinator benchmark` runs, with the parameters each accepts.
pub const BENCHMARKS: &[(&str, &[&str])] = &[
    (
        "linear_probe",
        &["cell_type_key", "test_size", "max_iter", "seed"],
    ),
    (
        "embedding_quality",
        &["cell_type_key", "batch_key", "n_neighbors"],
    ),
    (
        "perturbation",
        &[
            "perturbation_key",
            "control_label",
            "n_top_genes",
            "test_fraction",
            "seed",
        ],
    ),
];

/// Benchmarks scModelForge registers that anvil does not run: the wrappers around the external
/// cz-benchmarks package and GRN inference (not part of what anvil's benchmark verb offers).
pub const PACKAGE_ONLY: &[&str] = &[
    "cz_clustering",
    "cz_embedding",
    "cz_label_prediction",
    "cz_batch_integration",
    "grn_inference",
];

/// The AnnData file `coordinator benchmark` / `worker benchmark` runs on: `--data`, else the
/// config's `data.paths` when it names exactly one file (`config` names the config in errors).
pub fn benchmark_data(
    cfg: &ScModelForgeConfig,
    data: Option<&std::path::Path>,
    config: &std::path::Path,
) -> Result<std::path::PathBuf, String> {
    let path = match data {
        Some(d) => d.to_path_buf(),
        None => match cfg.data.paths.as_slice() {
            [one] => std::path::PathBuf::from(one),
            [] => {
                return Err(format!(
                    "{}: data.paths is empty; name the file with --data",
                    config.display()
                ))
            }
            many => {
                return Err(format!(
                    "{}: data.paths has {} files; name the one to benchmark on with --data",
                    config.display(),
                    many.len()
                ))
            }
        },
    };
    if !path.is_file() {
        return Err(format!(
            "--data {}: no such file (an .h5ad file is expected)",
            path.display()
        ));
    }
    Ok(path)
}

/// The first benchmark of `eval.benchmarks` that this build cannot run, or a parameter it
/// does not know, as a message naming `eval.benchmarks[i]` and the benchmark.
pub fn unsupported_benchmark(cfg: &ScModelForgeConfig) -> Option<String> {
    let names: Vec<&str> = BENCHMARKS.iter().map(|b| b.0).collect();
    for (i, b) in cfg.eval.benchmarks.iter().enumerate() {
        let Some((_, known)) = BENCHMARKS.iter().find(|k| k.0 == b.name) else {
            if PACKAGE_ONLY.contains(&b.name.as_str()) {
                return Some(format!(
                    "eval.benchmarks[{i}]: the {} benchmark is not implemented yet (this build runs: {}); remove it from eval.benchmarks",
                    b.name,
                    names.join(", ")
                ));
            }
            return Some(format!(
                "eval.benchmarks[{i}]: scModelForge has no benchmark named {:?} (this build runs: {}; the package also registers: {})",
                b.name,
                names.join(", "),
                PACKAGE_ONLY.join(", ")
            ));
        };
        if let Some((key, _)) = b
            .params
            .0
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            return Some(format!(
                "eval.benchmarks[{i}]: {} has no parameter {key:?} in this build (it takes: {})",
                b.name,
                known.join(", ")
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use configs::schema::{Params, Value};
    use configs::scmodelforge::BenchmarkSpec;

    fn with(specs: Vec<BenchmarkSpec>) -> ScModelForgeConfig {
        let mut cfg = ScModelForgeConfig::default();
        cfg.eval.benchmarks = specs;
        cfg
    }

    fn spec(name: &str, params: &[(&str, Value)]) -> BenchmarkSpec {
        BenchmarkSpec {
            name: name.into(),
            dataset: None,
            params: Params(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn benchmarks_are_refused_by_name_and_parameter() {
        assert_eq!(unsupported_benchmark(&with(vec![])), None);
        let probe = spec("linear_probe", &[("seed", Value::Int(1))]);
        assert_eq!(unsupported_benchmark(&with(vec![probe.clone()])), None);
        let perturb = spec("perturbation", &[("n_top_genes", Value::Int(20))]);
        assert_eq!(
            unsupported_benchmark(&with(vec![probe.clone(), perturb])),
            None
        );
        let why =
            unsupported_benchmark(&with(vec![probe.clone(), spec("cz_clustering", &[])])).unwrap();
        assert!(
            why.starts_with("eval.benchmarks[1]: the cz_clustering benchmark is not implemented"),
            "{why}"
        );
        // A name the package does not know either is called what it is.
        let why =
            unsupported_benchmark(&with(vec![probe.clone(), spec("knn_probe", &[])])).unwrap();
        assert!(
            why.starts_with(
                "eval.benchmarks[1]: scModelForge has no benchmark named \"knn_probe\""
            ),
            "{why}"
        );
        let why = unsupported_benchmark(&with(vec![spec(
            "perturbation",
            &[("n_genes", Value::Int(20))],
        )]))
        .unwrap();
        assert!(why.contains("no parameter \"n_genes\""), "{why}");
        // `dataset` is routing metadata in scModelForge's harness (popped, never used).
        let mut routed = spec("linear_probe", &[]);
        routed.dataset = Some("pbmc".into());
        assert_eq!(unsupported_benchmark(&with(vec![routed])), None);
        let quality = spec("embedding_quality", &[("batch_key", Value::Null)]);
        assert_eq!(unsupported_benchmark(&with(vec![quality])), None);
        let why = unsupported_benchmark(&with(vec![spec("linear_probe", &[("k", Value::Int(1))])]))
            .unwrap();
        assert!(why.contains("no parameter \"k\""), "{why}");
        // Training assesses on its one data file: none or several are refused.
        let mut cfg = with(vec![probe.clone()]);
        cfg.data.paths = vec!["a.h5ad".into(), "b.h5ad".into()];
        assert!(unsupported(&cfg)
            .unwrap()
            .contains("data.paths has 2 files"));
        cfg.data.paths = vec!["a.h5ad".into()];
        assert_eq!(unsupported(&cfg), None);
        cfg.eval.benchmarks.push(spec("knn_probe", &[]));
        assert!(unsupported(&cfg).unwrap().contains("knn_probe"));
    }

    #[test]
    fn shards_are_refused_where_labels_are_needed() {
        // Pretraining from shards is fine.
        let mut cfg = ScModelForgeConfig::default();
        cfg.data.shards.enabled = true;
        assert_eq!(unsupported(&cfg), None);
        // The in-training assessment needs obs labels.
        cfg.eval.benchmarks = vec![spec("linear_probe", &[])];
        assert!(unsupported(&cfg)
            .unwrap()
            .contains("shard directories do not carry"));
        // So does fine-tuning.
        cfg.eval.benchmarks.clear();
        cfg.finetune = Some(Default::default());
        let why = unsupported(&cfg).unwrap();
        assert!(why.starts_with("data.shards.enabled"), "{why}");
    }
}
