//! The checked-in config field references (docs/config-reference-*.md) are what
//! `coordinator config reference` generates from the schemas today.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn checked_in_references_match_the_schemas() {
    let dir = std::env::temp_dir().join(format!("anvil-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for family in ["scmodelforge", "sleap-nn"] {
        let name = format!("config-reference-{family}.md");
        let fresh = dir.join(&name);
        let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(["config", "reference", "--family", family, "--out"])
            .arg(&fresh)
            .output()
            .expect("run coordinator");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated = std::fs::read_to_string(&fresh).unwrap();
        let checked_in = std::fs::read_to_string(repo().join("docs").join(&name))
            .unwrap_or_else(|e| panic!("docs/{name}: {e}"));
        assert!(
            generated == checked_in,
            "docs/{name} does not match the schema; regenerate it with\n  \
             cargo run --release -p coordinator -- config reference --family {family} --out docs/{name}"
        );
    }
}
