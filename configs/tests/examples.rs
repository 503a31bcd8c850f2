//! Every example config shipped in `configs/` loads and validates.

use std::path::Path;

#[test]
fn every_shipped_example_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        if let Err(e) = configs::load_file(&path, &[]) {
            panic!("{} does not validate:\n{e}", path.display());
        }
    }
    assert!(
        n >= 7,
        "expected the example configs in {}, found {n}",
        dir.display()
    );
}

#[test]
fn quickstart_matches_the_documented_shape() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("quickstart.yaml");
    let c: configs::ScModelForgeConfig = configs::load_file_as(&path, &[]).unwrap();
    assert_eq!(
        (c.model.num_layers, c.model.hidden_dim, c.model.num_heads),
        (4, 128, 4)
    );
    assert_eq!(c.model.ffn_dim(), 512);
    assert_eq!(c.tokenizer.max_genes, 512);
    assert_eq!((c.training.batch_size, c.training.max_epochs), (32, 10));
    assert_eq!(c.data.paths, vec!["data/pbmc68k_counts.h5ad"]);
}
