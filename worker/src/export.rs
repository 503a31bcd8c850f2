//! `worker export` (`coordinator export`): a checkpoint as a self-contained, weights-only model
//! directory. A LoRA fine-tuning checkpoint, which holds only its adapters, trained biases and
//! head, gets its adapters merged into the frozen backbone's weights (peft's
//! `merge_and_unload`), so the export is an ordinary model: every backbone tensor under its
//! PyTorch name plus the task head, the config with `finetune.lora.enabled: false`, the
//! vocabulary, and a manifest. No optimizer state: an export is for `embed`, `benchmark`,
//! further fine-tuning, or loading into PyTorch with safetensors, not for resuming.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use configs::ConfigRoot;
use safetensors::tensor::{SafeTensors, TensorView};
use safetensors::Dtype;

use crate::checkpoint;
use crate::embed::Embedder;
use crate::finetune::lora::is_adapter;

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub dir: PathBuf,
    /// Tensors in model.safetensors.
    pub tensors: usize,
    /// Adapters folded into base weights (0 for a checkpoint without LoRA).
    pub merged: usize,
}

/// Exports the checkpoint `checkpoint` (a checkpoint directory or a directory of them: the
/// newest complete one) to the new directory `output`.
pub fn export(checkpoint: &Path, output: &Path) -> anyhow::Result<Exported> {
    if output.exists()
        && std::fs::read_dir(output)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "--output {} exists and is not empty; name a new directory",
            output.display()
        );
    }
    if !checkpoint.exists() {
        bail!("checkpoint {} does not exist", checkpoint.display());
    }
    let dir = checkpoint::resolve_resume(checkpoint)
        .with_context(|| format!("--checkpoint {}", checkpoint.display()))?;
    // Verified once: the model, config and vocabulary below all come from these bytes.
    let files =
        checkpoint::verify(&dir).with_context(|| format!("--checkpoint {}", dir.display()))?;
    let emb = Embedder::from_verified(dir.clone(), &files)?;
    let get = |n: &str| {
        files
            .get(n)
            .ok_or_else(|| anyhow!("checkpoint {}: {n} missing", dir.display()))
    };
    let lora = emb.cfg.finetune.as_ref().is_some_and(|f| f.lora.enabled);
    let source = SafeTensors::deserialize(get("model.safetensors")?)
        .map_err(|e| anyhow!("checkpoint {}: model.safetensors: {e}", dir.display()))?;
    // The backbone (merged under LoRA), then what else the checkpoint trained (the head);
    // adapters are folded in and left out.
    let layout = emb.model.layout();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    for e in layout.entries() {
        let data: &[f32] = &emb.params[e.view().range()];
        let v = TensorView::new(Dtype::F32, e.shape.clone(), bytemuck::cast_slice(data))
            .map_err(|err| anyhow!("tensor {}: {err}", e.name))?;
        views.push((e.name.clone(), v));
    }
    let mut merged = 0;
    let mut names: Vec<String> = source.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names {
        if is_adapter(&name) {
            merged += name.ends_with(".lora_A.weight") as usize;
            continue;
        }
        if layout.get(&name).is_ok() {
            continue;
        }
        let t = source
            .tensor(&name)
            .map_err(|e| anyhow!("checkpoint {}: tensor {name}: {e}", dir.display()))?;
        views.push((name, t));
    }
    let tensors = views.len();
    let model = safetensors::tensor::serialize(views, None)
        .map_err(|e| anyhow!("serializing the export: {e}"))?;
    let mut cfg = emb.cfg.clone();
    if let Some(ft) = cfg.finetune.as_mut() {
        ft.lora.enabled = false;
    }
    let config_yaml = if lora {
        cfg.to_yaml().into_bytes()
    } else {
        get("config.yaml")?.clone()
    };
    let out_files: Vec<(&str, Vec<u8>)> = vec![
        ("model.safetensors", model),
        ("state.json", get("state.json")?.clone()),
        ("config.yaml", config_yaml),
        ("vocab.json", get("vocab.json")?.clone()),
    ];
    let name = output
        .file_name()
        .ok_or_else(|| anyhow!("--output {} names no directory", output.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if output.exists() {
        std::fs::remove_dir(output).with_context(|| format!("--output {}", output.display()))?;
    }
    let dir_out = checkpoint::write_dir(&parent, &name, &out_files)
        .with_context(|| format!("--output {}", output.display()))?;
    Ok(Exported {
        dir: dir_out,
        tensors,
        merged,
    })
}
