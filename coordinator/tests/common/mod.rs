//! What the coordinator's end-to-end tests share: where the repository and the binaries are,
//! scratch directories, and the overrides that make the quickstart model tiny.

// Each test file uses a part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The worker binary beside the coordinator under test (`cargo test --workspace` builds it).
pub fn worker_bin() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_coordinator")).with_file_name("worker");
    assert!(
        worker.exists(),
        "the worker binary is not built at {} (cargo build -p worker, or cargo test --workspace)",
        worker.display()
    );
    worker
}

/// A fresh scratch directory `anvil-{suite}-{pid}-{name}` for one test.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anvil-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Overrides that make the quickstart model tiny: seconds per run on two cores. Each suite
/// adds its own `training.*` settings.
pub const TINY_MODEL: &[&str] = &[
    "model.hidden_dim=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_dim=64",
    "model.max_seq_len=64",
    "model.dropout=0.0",
    "tokenizer.max_genes=64",
    "data.max_genes=64",
    "data.num_workers=1",
];

/// `--set` for each override of the tiny model, then for each of `more`.
pub fn set_tiny(cmd: &mut Command, more: &[&str]) {
    for s in TINY_MODEL.iter().chain(more) {
        cmd.args(["--set", s]);
    }
}

/// A finished command's status and both streams, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Trains the tiny quickstart model for 3 steps with `worker train` into `dir` (its checkpoints
/// in `dir/checkpoints`), with `training` overrides on top of the tiny model's.
pub fn train_tiny_run(dir: &Path, training: &[&str]) {
    let mut cmd = Command::new(worker_bin());
    cmd.current_dir(repo())
        .args(["train", "--config", "configs/quickstart.yaml", "--run-dir"])
        .arg(dir)
        .args(["--max-steps", "3"]);
    set_tiny(&mut cmd, training);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "worker train failed:\n{}",
        describe(&out)
    );
}

/// The Python of scripts/install-deps.sh's venv (ANVIL_PYTHON) for checks that need `what`
/// (e.g. "anndata"); None, after saying the check is skipped, when unset outside CI. In CI an
/// unset ANVIL_PYTHON is an error, so such checks never pass by skipping there.
pub fn python(what: &str) -> Option<PathBuf> {
    match std::env::var_os("ANVIL_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("ANVIL_PYTHON is not set in CI: run the tests through scripts/test.sh")
        }
        None => {
            eprintln!(
                "\n*** SKIPPED: this check needs ANVIL_PYTHON (a Python with {what}); run \
                 scripts/test.sh, or bash scripts/install-deps.sh and \
                 ANVIL_PYTHON=/var/tmp/anvil-venv/bin/python cargo test ... ***\n"
            );
            None
        }
    }
}

/// A CA and a server certificate for `localhost` signed by it, made with the openssl CLI as a
/// user would. Returns (ca.pem, server.pem, server.key).
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=anvil test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
