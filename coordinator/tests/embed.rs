//! `coordinator embed` end to end: real processes. A tiny model is trained for a few steps
//! with `worker train` on the bundled PBMC data, then `coordinator embed` (which runs the
//! sibling `worker embed`) writes obsm["X_anvil"] into a copy of the file; anndata reads it
//! back (through ANVIL_PYTHON) and the embeddings are checked for determinism and errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{describe, repo};

fn pbmc() -> PathBuf {
    repo().join("data/pbmc68k_counts.h5ad")
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    common::scratch("embed", name)
}

/// The `training.*` overrides of this suite, on top of `common::TINY_MODEL`.
const TRAINING: &[&str] = &[
    "training.max_epochs=1",
    "training.log_every_n_steps=1",
    "training.val_split=0.1",
    "training.scheduler=null",
    "training.batch_size=16",
];

/// Embedding width of the tiny model (`model.hidden_dim` in `common::TINY_MODEL`).
const DIM: usize = 32;

/// A run directory with a trained checkpoint, made once for all tests of this file.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("run");
        common::train_tiny_run(&dir, TRAINING);
        dir
    })
}

fn embed(checkpoint: &Path, data: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("embed")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--data")
        .arg(data)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

fn read_obsm(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let f = hdf5::File::open(path).unwrap();
    let ds = f.dataset("obsm/X_anvil").unwrap();
    (ds.shape(), ds.read_raw::<f32>().unwrap())
}

fn n_obs(path: &Path) -> usize {
    // The `shape` attribute of a sparse X (the bundled file's X is CSR).
    let f = hdf5::File::open(path).unwrap();
    let shape: Vec<i64> = f
        .group("X")
        .unwrap()
        .attr("shape")
        .unwrap()
        .read_raw()
        .unwrap();
    shape[0] as usize
}

#[test]
fn embed_writes_a_copy_anndata_reads() {
    let dir = scratch("anndata");
    let out_path = dir.join("embedded.h5ad");
    let before = std::fs::read(pbmc()).unwrap();
    let out = embed(
        &trained_run().join("checkpoints"),
        &pbmc(),
        &out_path,
        &["--batch-size", "50"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        std::fs::read(pbmc()).unwrap(),
        before,
        "the input file changed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cells"), "no progress on stderr:\n{stderr}");
    // No temporary file left beside the output.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["embedded.h5ad".to_string()]);

    let (shape, values) = read_obsm(&out_path);
    assert_eq!(shape, vec![n_obs(&pbmc()), DIM]);
    assert!(values.iter().all(|v| v.is_finite()));

    let Some(python) = common::python("anndata") else {
        return;
    };
    let script = format!(
        r#"
import anndata, numpy as np, scipy.sparse as sp
src = anndata.read_h5ad({src:?})
out = anndata.read_h5ad({out:?})
e = out.obsm["X_anvil"]
assert isinstance(e, np.ndarray), type(e)
assert e.dtype == np.float32, e.dtype
assert e.shape == (src.n_obs, {dim}), e.shape
assert np.isfinite(e).all()
assert list(out.obs_names) == list(src.obs_names)
assert list(out.var_names) == list(src.var_names)
assert out.obs.equals(src.obs)
assert out.var.equals(src.var)
a, b = out.X, src.X
if sp.issparse(a) or sp.issparse(b):
    assert sp.issparse(a) and sp.issparse(b) and a.shape == b.shape and (a != b).nnz == 0
else:
    assert np.array_equal(a, b)
assert set(out.obsm.keys()) == set(src.obsm.keys()) | {{"X_anvil"}}
assert set(out.uns.keys()) == set(src.uns.keys())
print("ok", e.shape)
"#,
        src = pbmc().display().to_string(),
        out = out_path.display().to_string(),
        dim = DIM
    );
    let py = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        py.status.success(),
        "anndata check failed:\n{}",
        describe(&py)
    );
}

#[test]
fn embeddings_are_deterministic_and_independent_of_batch_size() {
    let dir = scratch("determinism");
    let ckpt = trained_run().join("checkpoints/last");
    let (a, b, c) = (dir.join("a.h5ad"), dir.join("b.h5ad"), dir.join("c.h5ad"));
    for (p, bs) in [(&a, "64"), (&b, "64"), (&c, "7")] {
        let out = embed(&ckpt, &pbmc(), p, &["--batch-size", bs]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    let (sa, va) = read_obsm(&a);
    let (sb, vb) = read_obsm(&b);
    assert_eq!(sa, sb);
    let bytes = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bytes(&va), bytes(&vb), "two runs gave different embeddings");
    // Another batch size pads differently; padding is masked out, so the values agree.
    let (sc, vc) = read_obsm(&c);
    assert_eq!(sa, sc);
    let worst = va
        .iter()
        .zip(&vc)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "batch size 7 vs 64 differ by {worst}");
    // Cells differ from each other (not one constant row).
    assert_ne!(bytes(&va[..DIM]), bytes(&va[DIM..2 * DIM]));
}

#[test]
fn replaces_an_existing_x_anvil_and_respects_overwrite() {
    let dir = scratch("overwrite");
    let ckpt = trained_run().join("checkpoints");
    let first = dir.join("first.h5ad");
    let out = embed(&ckpt, &pbmc(), &first, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let (_, v1) = read_obsm(&first);

    // Embedding a file that already has obsm/X_anvil replaces it.
    let second = dir.join("second.h5ad");
    let out = embed(&ckpt, &first, &second, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let (s2, v2) = read_obsm(&second);
    assert_eq!(s2, vec![n_obs(&pbmc()), DIM]);
    assert_eq!(v1, v2);

    // An existing output is refused without --overwrite and left alone.
    let before = std::fs::read(&second).unwrap();
    let out = embed(&ckpt, &pbmc(), &second, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("second.h5ad"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&second).unwrap(), before);
    let out = embed(&ckpt, &pbmc(), &second, &["--overwrite"]);
    assert!(out.status.success(), "{}", describe(&out));

    // The output may never be the input, even with --overwrite.
    let before = std::fs::read(&first).unwrap();
    let out = embed(&ckpt, &first, &first, &["--overwrite"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the input file"), "{stderr}");
    assert_eq!(std::fs::read(&first).unwrap(), before);
}

#[test]
fn clear_errors() {
    let dir = scratch("errors");
    let ckpt = trained_run().join("checkpoints/last");
    let out_path = dir.join("out.h5ad");
    let fails_with = |out: Output, needles: &[&str]| {
        assert!(
            !out.status.success(),
            "expected failure:\n{}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
        }
        assert!(!out_path.exists(), "a failed embed left an output");
    };

    // A checkpoint that does not exist.
    let missing = dir.join("no-such-checkpoint");
    fails_with(
        embed(&missing, &pbmc(), &out_path, &[]),
        &["does not exist", "no-such-checkpoint"],
    );

    // A checkpoint whose files no longer match its manifest.
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for e in std::fs::read_dir(&ckpt).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), corrupt.join(e.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(corrupt.join("model.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(corrupt.join("model.safetensors"), bytes).unwrap();
    fails_with(
        embed(&corrupt, &pbmc(), &out_path, &[]),
        &["corrupt", "model.safetensors", "manifest"],
    );

    // A data file that is not AnnData.
    let not_h5ad = dir.join("notes.h5ad");
    std::fs::write(&not_h5ad, "not an hdf5 file\n").unwrap();
    fails_with(
        embed(&ckpt, &not_h5ad, &out_path, &[]),
        &["--data", "notes.h5ad"],
    );

    // A data file that does not exist.
    fails_with(
        embed(&ckpt, &dir.join("absent.h5ad"), &out_path, &[]),
        &["--data", "absent.h5ad"],
    );

    // A data file sharing no genes with the checkpoint's vocabulary.
    let synth = dir.join("synth.h5ad");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "synth", "--cells", "20", "--genes", "30", "--out"])
        .arg(&synth)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    fails_with(
        embed(&ckpt, &synth, &out_path, &[]),
        &["synth.h5ad", "vocabulary"],
    );
}

/// The hidden part directories `--nodes` uses, left in `dir`.
fn leftover_parts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.contains(".parts-").then_some(n)
        })
        .collect()
}

#[test]
fn several_worker_processes_write_the_same_embeddings_as_one() {
    let dir = scratch("nodes");
    let ckpt = trained_run().join("checkpoints");
    let one = dir.join("one.h5ad");
    let out = embed(&ckpt, &pbmc(), &one, &["--batch-size", "32"]);
    assert!(out.status.success(), "{}", describe(&out));
    let (s1, v1) = read_obsm(&one);
    // 700 cells over 3 workers: 234 + 233 + 233, so the split is uneven and no batch of one
    // worker lines up with the single process's batches.
    for nodes in ["2", "3"] {
        let many = dir.join(format!("nodes{nodes}.h5ad"));
        let out = embed(
            &ckpt,
            &pbmc(),
            &many,
            &["--batch-size", "32", "--nodes", nodes],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "embed worker {}/{nodes}",
                nodes.parse::<usize>().unwrap() - 1
            )),
            "{stderr}"
        );
        let (sn, vn) = read_obsm(&many);
        assert_eq!(sn, s1);
        let worst = v1
            .iter()
            .zip(&vn)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "--nodes {nodes} differs from one process by {worst}"
        );
        assert_eq!(n_obs(&many), n_obs(&pbmc()));
    }
    assert!(
        leftover_parts(&dir).is_empty(),
        "{:?}",
        leftover_parts(&dir)
    );

    // A worker that fails (a data file that is not AnnData) fails the command, names the
    // file, writes no output and leaves no parts behind.
    let not_h5ad = dir.join("notes.h5ad");
    std::fs::write(&not_h5ad, "not an hdf5 file\n").unwrap();
    let bad = dir.join("bad.h5ad");
    let out = embed(&ckpt, &not_h5ad, &bad, &["--nodes", "2"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.h5ad") && stderr.contains("embed worker"),
        "{stderr}"
    );
    assert!(!bad.exists());
    assert!(
        leftover_parts(&dir).is_empty(),
        "{:?}",
        leftover_parts(&dir)
    );

    // An existing output is refused before any worker starts.
    let before = std::fs::read(&one).unwrap();
    let out = embed(&ckpt, &pbmc(), &one, &["--nodes", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&one).unwrap(), before);
    let out = embed(&ckpt, &pbmc(), &one, &["--nodes", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes must be at least 1"));
}

/// A free loopback address for an external group's coordinator.
fn free_listen_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// `coordinator embed --external` on `listen`, started in the background.
fn spawn_external_embed(
    data: &Path,
    output: &Path,
    listen: &str,
    token: &Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("embed")
        .arg("--checkpoint")
        .arg(trained_run().join("checkpoints"))
        .arg("--data")
        .arg(data)
        .arg("--output")
        .arg(output)
        .args(["--external", "--listen", listen, "--token-file"])
        .arg(token)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A worker started as Slurm or Kubernetes would start one: `worker --coordinator ADDR`, in a
/// working directory of its own.
fn spawn_external_worker(listen: &str, token: &Path, cwd: &Path) -> std::process::Child {
    spawn_external_worker_with(listen, token, cwd, &[])
}

fn spawn_external_worker_with(
    listen: &str,
    token: &Path,
    cwd: &Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(common::worker_bin())
        .current_dir(cwd)
        .args(["--coordinator", listen, "--token-file"])
        .arg(token)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `--tls-cert/--tls-key` with `--external`: the registration is served over TLS, workers that
/// trust the CA (`worker --tls-ca`) embed as over plain TCP, and one that does not never
/// registers (named); without `--external` the flags are refused.
#[test]
fn external_workers_over_tls_embed_and_plain_ones_cannot_register() {
    let dir = scratch("external-tls");
    let (ca, cert, key) = common::make_certificates(&dir);
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let token = dir.join("token");
    std::fs::write(&token, "external-tls-token\n").unwrap();
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca.as_str(),
    ];

    let listen = free_listen_addr();
    let out_file = dir.join("tls.h5ad");
    let mut extra = vec!["--nodes", "1"];
    extra.extend(tls);
    let coordinator = spawn_external_embed(&pbmc(), &out_file, &listen, &token, &extra);
    let w = spawn_external_worker_with(&listen, &token, &dir, &["--tls-ca", ca.as_str()]);
    let out = coordinator.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("--tls-ca {ca}")), "{stderr}");
    assert!(w.wait_with_output().unwrap().status.success());
    let (shape, v) = read_obsm(&out_file);
    assert_eq!(shape[0], 700);
    assert!(v.iter().all(|x| x.is_finite()));

    // A worker without the CA cannot register over TLS: the command names the missing rank.
    let listen = free_listen_addr();
    let plain_out = dir.join("plain.h5ad");
    let mut extra = vec!["--nodes", "1", "--register-timeout", "4"];
    extra.extend(tls);
    let coordinator = spawn_external_embed(&pbmc(), &plain_out, &listen, &token, &extra);
    let plain = spawn_external_worker(&listen, &token, &dir);
    let out = coordinator.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[0] did not register"),
        "{}",
        describe(&out)
    );
    let _ = plain.wait_with_output();
    assert!(!plain_out.exists());

    // TLS without --external: refused by name.
    let out = embed(
        &trained_run().join("checkpoints"),
        &pbmc(),
        &dir.join("local.h5ad"),
        &tls,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--tls-cert secures the registration of --external workers"),
        "{}",
        describe(&out)
    );
}

/// `--nodes 2 --external`: the coordinator waits for two workers started elsewhere (here by
/// hand, in another working directory), hands each its share of the cells through the
/// registration, and writes the same embeddings as one process. A worker that never registers,
/// or whose share fails, fails the command naming its rank, leaving nothing behind.
#[test]
fn external_workers_embed_their_shares_through_the_coordinator() {
    let dir = scratch("external");
    let one = dir.join("one.h5ad");
    let out = embed(
        &trained_run().join("checkpoints"),
        &pbmc(),
        &one,
        &["--batch-size", "32"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let (s1, v1) = read_obsm(&one);
    let token = dir.join("token");
    std::fs::write(&token, "external-embed-token\n").unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let no_parts =
        |dir: &Path| assert!(leftover_parts(dir).is_empty(), "{:?}", leftover_parts(dir));

    let listen = free_listen_addr();
    let many = dir.join("external.h5ad");
    let coordinator = spawn_external_embed(
        &pbmc(),
        &many,
        &listen,
        &token,
        &["--batch-size", "32", "--nodes", "2"],
    );
    let workers = [0, 1].map(|_| spawn_external_worker(&listen, &token, &elsewhere));
    let out = coordinator.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting for 2 external worker(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("worker rank 1 registered"), "{stderr}");
    assert!(stderr.contains("worker rank 0 done"), "{stderr}");
    for w in workers {
        let w = w.wait_with_output().unwrap();
        assert!(w.status.success(), "{}", describe(&w));
    }
    let (sn, vn) = read_obsm(&many);
    assert_eq!(sn, s1);
    let worst = v1
        .iter()
        .zip(&vn)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "external workers differ from one process by {worst}"
    );
    no_parts(&dir);

    // One of two workers never comes: the error names rank 1.
    let listen = free_listen_addr();
    let missing = dir.join("missing.h5ad");
    let coordinator = spawn_external_embed(
        &pbmc(),
        &missing,
        &listen,
        &token,
        &["--nodes", "2", "--register-timeout", "3"],
    );
    let lone = spawn_external_worker(&listen, &token, &elsewhere);
    let out = coordinator.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[1] did not register"), "{stderr}");
    let _ = lone.wait_with_output();
    assert!(!missing.exists());
    no_parts(&dir);

    // A worker whose share fails (the data is not AnnData): its rank and the file.
    let not_h5ad = dir.join("notes.h5ad");
    std::fs::write(&not_h5ad, "not an hdf5 file\n").unwrap();
    let listen = free_listen_addr();
    let bad = dir.join("bad.h5ad");
    let coordinator = spawn_external_embed(&not_h5ad, &bad, &listen, &token, &["--nodes", "1"]);
    let w = spawn_external_worker(&listen, &token, &elsewhere);
    let out = coordinator.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("worker rank 0 on") && stderr.contains("notes.h5ad"),
        "{stderr}"
    );
    let _ = w.wait_with_output();
    assert!(!bad.exists());
    no_parts(&dir);
}
