//! `coordinator config ...` run as a user runs it: the real binary, real files, exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn coordinator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run coordinator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anvil-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn validate_prints_a_summary_and_exits_0() {
    let out = coordinator(&["config", "validate", "--config", "configs/quickstart.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("valid scModelForge config: pretrain transformer_encoder (4 layers, hidden 128, 4 heads)"), "{stdout}");
}

#[test]
fn validate_prints_every_error_and_exits_2() {
    let path = temp_file(
        "bad.yaml",
        "data:\n  paths: [a.h5ad]\ntraining:\n  batchsize: 32\n  precision: bf16\nmodel:\n  hidden_dim: 100\n",
    );
    let out = coordinator(&["config", "validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":4:3: training.batchsize: unknown key; did you mean training.batch_size?"),
        "{stderr}"
    );
    assert!(stderr.contains("training.precision: \"bf16\" is not allowed; expected one of \"32\", \"16-mixed\" or \"bf16-mixed\""), "{stderr}");
    assert!(
        stderr.contains("model.hidden_dim: hidden_dim 100 is not divisible by num_heads 8"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problems found"), "{stderr}");
}

#[test]
fn missing_file_and_bad_yaml_are_clear_errors() {
    let out = coordinator(&["config", "validate", "--config", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read config file nope.yaml"),
        "{}",
        text(&out.stderr)
    );

    let path = temp_file("syntax.yaml", "data:\n  paths: [a.h5ad\n");
    let out = coordinator(&["config", "validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("YAML syntax error"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn show_prints_resolved_yaml_that_validates_again() {
    let out = coordinator(&[
        "config",
        "show",
        "--config",
        "configs/quickstart.yaml",
        "--set",
        "training.optimizer.lr=3e-4",
        "--set",
        "model.num_layers=2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("    lr: 0.0003\n"), "{yaml}");
    assert!(yaml.contains("  num_layers: 2\n"), "{yaml}");
    assert!(
        yaml.contains("  wandb_project: scmodelforge\n"),
        "defaults are filled in:\n{yaml}"
    );

    let path = temp_file("shown.yaml", &yaml);
    let out = coordinator(&["config", "validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn set_overrides_are_validated() {
    let out = coordinator(&[
        "config",
        "validate",
        "--config",
        "configs/quickstart.yaml",
        "--set",
        "training.batch_size=many",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--set training.batch_size=many: training.batch_size: expected a non-negative integer, got 'many'"), "{stderr}");
}

#[test]
fn help_describes_commands() {
    let out = coordinator(&["--help"]);
    assert!(text(&out.stdout).contains("Check and inspect config files"));
    let out = coordinator(&["config", "validate", "--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("--set <KEY.PATH=VALUE>"), "{help}");
    assert!(help.contains("--config <FILE>"), "{help}");
}

/// `coordinator data inspect F | head -1`: the reader leaves early, and the command ends
/// quietly (SIGPIPE, as `cat` does) instead of panicking about a broken pipe.
#[test]
fn a_reader_that_leaves_early_ends_a_print_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // 200 reports of ~740 bytes: well past a pipe's 64 KiB buffer, so the writer is still
    // writing when the reader leaves.
    let files = vec!["data/pbmc68k_counts.h5ad"; 200];
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "inspect"])
        .args(&files)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coordinator");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    // The pipe's read end is closed here, with most of the output unread.
    let out = child.wait_with_output().expect("wait");
    assert!(first.contains("pbmc68k_counts.h5ad"), "{first}");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

/// `coordinator data inspect labels.slp` summarizes SLEAP labels instead of reading AnnData.
#[test]
fn data_inspect_summarizes_sleap_labels() {
    let slp = repo().join("../shared/data/minimal_instance.pkg.slp");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "inspect"])
        .arg(&slp)
        .output()
        .expect("run coordinator");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("Skeleton-0: 2 nodes [A, B]"), "{stdout}");
    assert!(stdout.contains("edges: [A->B]"), "{stdout}");
    assert!(stdout.contains("1 embedded png frames"), "{stdout}");
    assert!(
        stdout.contains("1 frames of 384x384x1; 1 labeled frames"),
        "{stdout}"
    );
    assert!(
        stdout.contains("instances: 2 user, 0 predicted"),
        "{stdout}"
    );
}
