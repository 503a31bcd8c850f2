//! `coordinator shard` and training from `data.shards`, end to end with real files and
//! processes. The reference is a shard directory scModelForge 0.1.0 wrote itself
//! (`scripts/shard_reference.py`: 40 PBMC cells x 200 genes, 16 cells per shard): anvil's
//! conversion of the same .h5ad must be byte-identical, and anvil must read scModelForge's
//! directory back to the cells of the .h5ad.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{describe, repo, set_tiny};
use data::anndata::{self, AnnDataReader};
use data::shards::open_shard_dir;

fn fixture() -> PathBuf {
    repo().join("coordinator/tests/fixtures/shards")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("shard", name)
}

fn coordinator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A config whose data.paths is `files`.
fn config(dir: &Path, files: &[&Path]) -> PathBuf {
    let list: Vec<String> = files.iter().map(|f| format!("\"{}\"", s(f))).collect();
    let path = dir.join("config.yaml");
    std::fs::write(&path, format!("data:\n  paths: [{}]\n", list.join(", "))).unwrap();
    path
}

/// Every cell of `readers` (in order) as (gene name, value) pairs sorted by gene.
fn cells(readers: &[Box<dyn AnnDataReader>]) -> Vec<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for r in readers {
        let rows = r.read_rows(0, r.n_obs()).unwrap();
        for i in 0..rows.n_rows() {
            let (idx, val) = rows.row(i);
            let mut cell: Vec<(String, f32)> = idx
                .iter()
                .zip(val)
                .filter(|(_, &v)| v > 0.0)
                .map(|(&c, &v)| (r.var_names()[c as usize].clone(), v))
                .collect();
            cell.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(cell);
        }
    }
    out
}

#[test]
fn conversion_is_byte_identical_to_scmodelforges() {
    let dir = scratch("bytes");
    let out = dir.join("shards");
    let cfg = config(&dir, &[&fixture().join("cells.h5ad")]);
    let o = coordinator(&[
        "shard",
        "--config",
        s(&cfg),
        "--output-dir",
        s(&out),
        "--shard-size",
        "16",
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    let reference = fixture().join("scmodelforge");
    let mut files = vec!["manifest.json".to_string()];
    for shard in ["shard_000", "shard_001", "shard_002"] {
        for f in ["X.npy", "gene_indices.npy", "n_genes.npy", "metadata.json"] {
            files.push(format!("{shard}/{f}"));
        }
    }
    for f in &files {
        let want = std::fs::read(reference.join(f)).unwrap();
        let got = std::fs::read(out.join(f)).unwrap_or_else(|_| panic!("anvil wrote no {f}"));
        assert!(got == want, "{f} differs from scModelForge's");
    }
    // The vocabulary it carries is the one scModelForge's GeneVocab.save writes.
    assert_eq!(
        std::fs::read(out.join("gene_vocab.json")).unwrap(),
        std::fs::read(fixture().join("vocab.json")).unwrap()
    );
    assert!(!out.join("shard_003").exists());

    let o = coordinator(&["data", "inspect", s(&out)]);
    assert!(o.status.success(), "{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("shards: 3")
            && text.contains("cells: 40")
            && text.contains("vocabulary genes: 200"),
        "{text}"
    );
}

#[test]
fn scmodelforges_shards_read_back_as_the_cells_of_the_file() {
    let h5ad = anndata::open(fixture().join("cells.h5ad")).unwrap();
    let want = cells(&[h5ad]);
    let vocab = fixture().join("vocab.json");
    let shards = open_shard_dir(&fixture().join("scmodelforge"), Some(&vocab)).unwrap();
    assert_eq!(shards.len(), 3);
    assert_eq!(
        shards.iter().map(|r| r.n_obs()).collect::<Vec<_>>(),
        vec![16, 16, 8]
    );
    assert_eq!(cells(&shards), want);

    // Without a vocabulary the directory cannot be decoded, and says what to do.
    let e = open_shard_dir(&fixture().join("scmodelforge"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("data.gene_vocab"), "{e}");

    // A vocabulary other than the one the shards were written with is caught by the hash.
    let dir = scratch("wrong-vocab");
    let text = std::fs::read_to_string(&vocab).unwrap();
    let wrong = dir.join("vocab.json");
    std::fs::write(&wrong, text.replacen("\"HES4\"", "\"HES4-renamed\"", 1)).unwrap();
    let e = open_shard_dir(&fixture().join("scmodelforge"), Some(&wrong))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocab_hash"), "{e}");
}

#[test]
fn bad_requests_are_refused_and_nothing_is_overwritten() {
    let dir = scratch("errors");
    let cfg = config(&dir, &[&fixture().join("cells.h5ad")]);
    let taken = dir.join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), b"keep me").unwrap();
    let o = coordinator(&["shard", "--config", s(&cfg), "--output-dir", s(&taken)]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{}",
        describe(&o)
    );
    assert_eq!(std::fs::read(taken.join("keep.txt")).unwrap(), b"keep me");

    let missing = config(&dir, &[&dir.join("missing.h5ad")]);
    let o = coordinator(&[
        "shard",
        "--config",
        s(&missing),
        "--output-dir",
        s(&dir.join("m")),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing.h5ad: file not found"),
        "{}",
        describe(&o)
    );

    // Training from a directory that is not a complete shard directory stops before any worker.
    let o = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .current_dir(repo())
        .args([
            "launch",
            "--nodes",
            "1",
            "--config",
            "configs/quickstart.yaml",
        ])
        .args(["--run-dir", s(&dir.join("run"))])
        .args([
            "--set",
            "data.paths=[]",
            "--set",
            "data.shards.enabled=true",
        ])
        .args(["--set", &format!("data.shards.shard_dir={}", s(&taken))])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no manifest.json"),
        "{}",
        describe(&o)
    );
    // Shards with data.paths as well: which is meant is unclear, so the config is refused.
    let o = coordinator(&[
        "config",
        "validate",
        "--config",
        "configs/quickstart.yaml",
        "--set",
        "data.shards.enabled=true",
        "--set",
        "data.shards.shard_dir=x",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("data.paths must be empty")
            || String::from_utf8_lossy(&o.stderr).contains("data.paths must be empty"),
        "{}",
        describe(&o)
    );
}

/// (step, train/loss) of a run's metrics.csv.
fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    let path = run::versions::metrics_csv(run_dir);
    let text = std::fs::read_to_string(&path).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (step, loss) = (col("step"), col("train/loss"));
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.get(step)?.parse().ok()?, f.get(loss)?.parse().ok()?))
        })
        .collect()
}

fn launch(run_dir: &Path, nodes: usize, data: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo())
        .args(["launch", "--config", "configs/quickstart.yaml", "--nodes"])
        .arg(nodes.to_string())
        .arg("--run-dir")
        .arg(run_dir);
    set_tiny(
        &mut cmd,
        &[
            "training.max_epochs=1",
            "training.log_every_n_steps=1",
            "training.batch_size=16",
            "training.scheduler=null",
        ],
    );
    for d in data {
        cmd.args(["--set", d]);
    }
    cmd.output().unwrap()
}

#[test]
fn training_from_shards_matches_training_from_the_file() {
    let dir = scratch("train");
    let pbmc = repo().join("data/pbmc68k_counts.h5ad");
    let cfg = config(&dir, &[&pbmc]);
    let convert = |out: &Path, size: &str| {
        let o = coordinator(&[
            "shard",
            "--config",
            s(&cfg),
            "--output-dir",
            s(out),
            "--shard-size",
            size,
        ]);
        assert!(o.status.success(), "{}", describe(&o));
    };
    // One shard: the plan's shuffle blocks never straddle two files (or shards), so only a
    // single shard has exactly the file's epoch order.
    let shards = dir.join("shards");
    convert(&shards, "1000");

    let from_file = dir.join("run-file");
    let o = launch(&from_file, 2, &[]);
    assert!(o.status.success(), "{}", describe(&o));
    let from_shards = dir.join("run-shards");
    let shard_dir = format!("data.shards.shard_dir={}", s(&shards));
    let o = launch(
        &from_shards,
        2,
        &["data.paths=[]", "data.shards.enabled=true", &shard_dir],
    );
    assert!(o.status.success(), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("shards of"),
        "{}",
        describe(&o)
    );

    let (a, b) = (losses(&from_file), losses(&from_shards));
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    assert!(a.iter().chain(&b).all(|(_, l)| l.is_finite()));
    // The same cells with the same genes, vocabulary and values: the same training.
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "step {sa}: {la} vs {lb}"
        );
    }

    // Three shards spread over two workers train as well (another epoch order, as three
    // files would have).
    let three = dir.join("three");
    convert(&three, "250");
    let run = dir.join("run-three");
    let shard_dir = format!("data.shards.shard_dir={}", s(&three));
    let o = launch(
        &run,
        2,
        &["data.paths=[]", "data.shards.enabled=true", &shard_dir],
    );
    assert!(o.status.success(), "{}", describe(&o));
    let c = losses(&run);
    assert_eq!(c.len(), a.len());
    assert!(c.iter().all(|(_, l)| l.is_finite()));
}
