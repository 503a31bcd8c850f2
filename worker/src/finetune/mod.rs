//! Fine-tuning (`finetune` section): a pretrained backbone from an anvil checkpoint, a task
//! head on its pooled cell embedding, labels from `obs`.
//!
//! The trainer runs a fine-tuning config like any other: [`resolve`] takes the backbone's
//! `model` and `tokenizer` sections and its vocabulary from `finetune.checkpoint_path` (the
//! weights must match them), and [`FinetuneModel`] is an [`ScModel`] whose loss is the task's:
//! cross-entropy over cells (classification) or squared error (regression). Its validation
//! adds accuracy and macro-F1, or MSE and Pearson's r. `freeze_backbone` /
//! `freeze_backbone_epochs` and the `backbone_lr` / `head_lr` parameter groups are the
//! trainer's, which asks the model for its head's range of the parameter buffer.
//!
//! As in scModelForge, a frozen backbone computes no gradient; unlike it, a frozen backbone
//! also runs without dropout (its embedding is the evaluation one), which is what lets every
//! architecture be fine-tuned with a frozen backbone while only `transformer_encoder` has the
//! backward through its pooling.

pub mod head;
pub mod labels;
pub mod lora;
pub mod metrics;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use configs::scmodelforge::{FinetuneConfig, HeadTask, ScModelForgeConfig};
use data::Batch;
use kernels::rng::RngKey;
use kernels::{Cpu, Device, ParamLayout, Precision};

use self::head::TaskHead;
use self::labels::Labels;
use self::metrics::{ClassCounts, PairSums};
use crate::embed::Embedder;
use crate::model::{GradsReady, LossSum, ModelError, Result, ScModel};

/// metrics.csv names of the validation metrics.
pub const VAL_ACCURACY: &str = "val/accuracy";
pub const VAL_F1_MACRO: &str = "val/f1_macro";
pub const VAL_MSE: &str = "val/mse";
pub const VAL_PEARSON: &str = "val/pearson";

/// The columns a task adds to metrics.csv.
pub fn metric_columns(task: HeadTask) -> [&'static str; 2] {
    match task {
        HeadTask::Classification => [VAL_ACCURACY, VAL_F1_MACRO],
        HeadTask::Regression => [VAL_MSE, VAL_PEARSON],
    }
}

/// The pretrained backbone: its checkpoint loaded as `worker embed` loads one.
pub type Backbone = Embedder;

/// Loads the backbone `finetune.checkpoint_path` names and returns `cfg` with the backbone's
/// `model` and `tokenizer` sections (what its weights and vocabulary were trained with), and
/// the backbone. The list says which sections of `cfg` differed and were replaced.
pub fn resolve(
    cfg: &ScModelForgeConfig,
) -> std::result::Result<(ScModelForgeConfig, Backbone, Vec<&'static str>), String> {
    let Some(ft) = cfg.finetune.as_ref() else {
        return Err("no finetune section".into());
    };
    let Some(ck) = ft.checkpoint() else {
        return Err("finetune.checkpoint_path is empty: name the pretrained checkpoint there, or run `coordinator finetune --config X.yaml --checkpoint DIR`".into());
    };
    let backbone = Embedder::load(Path::new(ck))
        .map_err(|e| format!("finetune.checkpoint_path {ck}: {e:#}"))?;
    let mut out = cfg.clone();
    let mut replaced = Vec::new();
    if out.model.to_value() != backbone.cfg.model.to_value() {
        replaced.push("model");
    }
    if out.tokenizer.to_value() != backbone.cfg.tokenizer.to_value() {
        replaced.push("tokenizer");
    }
    if out.data.max_genes != backbone.cfg.data.max_genes {
        replaced.push("data.max_genes");
    }
    out.model = backbone.cfg.model.clone();
    out.tokenizer = backbone.cfg.tokenizer.clone();
    out.data.max_genes = backbone.cfg.data.max_genes;
    // The run's checkpoints record the exact backbone (not a directory's newest).
    if let Some(f) = out.finetune.as_mut() {
        f.checkpoint_path = Some(backbone.dir.display().to_string());
    }
    // The merged config is what the run's checkpoints record: it must load again.
    let name = format!(
        "the fine-tuning config with the model of {}",
        backbone.dir.display()
    );
    configs::Sources::from_str(&out.to_yaml(), &name)
        .and_then(|s| s.load_as::<ScModelForgeConfig>())
        .map_err(|e| format!("{name} is not valid: {e}"))?;
    Ok((out, backbone, replaced))
}

use configs::schema::ToValue;
use configs::ConfigRoot;

/// The classes (or outputs) the head predicts, checked against the labels.
pub fn head_outputs(ft: &FinetuneConfig, labels: &Labels) -> std::result::Result<usize, String> {
    match (ft.head.task, labels) {
        (HeadTask::Classification, Labels::Classes { names, .. }) => {
            if names.len() < 2 {
                return Err(format!(
                    "finetune.label_key: obs/{} holds {} class(es) ({}); classification needs at least 2",
                    ft.label_key,
                    names.len(),
                    names.join(", ")
                ));
            }
            match ft.head.n_classes {
                None => Ok(names.len()),
                Some(n) if n >= names.len() => Ok(n),
                Some(n) => Err(format!(
                    "finetune.head.n_classes = {n}, but obs/{} holds {} classes; set it to null to infer it",
                    ft.label_key,
                    names.len()
                )),
            }
        }
        (HeadTask::Regression, Labels::Values(_)) => {
            if ft.head.output_dim != 1 {
                return Err(format!(
                    "finetune.head.output_dim = {}: the targets come from one obs column (finetune.label_key), so a regression head predicts 1 value; set output_dim: 1",
                    ft.head.output_dim
                ));
            }
            Ok(1)
        }
        _ => Err("labels do not fit finetune.head.task".into()),
    }
}

/// A backbone and a task head: the fine-tuning model the trainer trains.
pub struct FinetuneModel {
    dev: Cpu,
    backbone: Box<dyn ScModel>,
    layout: ParamLayout,
    head: TaskHead<Vec<f32>>,
    head_range: Range<usize>,
    labels: Arc<Labels>,
    /// Added to regression targets' and predictions' moment sums (the targets' mean).
    shift: f64,
    trainable: bool,
    /// LoRA: the adapted modules and the backbone's ranges that train (adapters, biases).
    lora: Option<(Vec<String>, Vec<Range<usize>>)>,
    counts: ClassCounts,
    pairs: PairSums,
}

impl FinetuneModel {
    /// `backbone` (as built from the checkpoint's model section) with, when `finetune.lora` is
    /// enabled, LoRA adapters registered after its parameters, and a head after those.
    pub fn new(
        mut backbone: Box<dyn ScModel>,
        ft: &FinetuneConfig,
        labels: Arc<Labels>,
        prec: Precision,
    ) -> std::result::Result<Self, String> {
        let outputs = head_outputs(ft, &labels)?;
        if !(0.0..1.0).contains(&ft.head.dropout) {
            return Err(format!(
                "finetune.head.dropout must be in [0, 1), got {}",
                ft.head.dropout
            ));
        }
        if ft.head.hidden_dim == Some(0) {
            return Err("finetune.head.hidden_dim must be positive (or null for none)".into());
        }
        let lora = if ft.lora.enabled {
            let adapted = backbone
                .attach_lora(&lora::spec(&ft.lora))
                .map_err(|e| e.to_string())?;
            let ranges = lora::trainable(backbone.layout(), &adapted, ft.lora.bias);
            Some((adapted, ranges))
        } else {
            None
        };
        let mut layout = backbone.layout().clone();
        let start = layout.total();
        let head = TaskHead::new(
            &mut layout,
            backbone.embedding_dim(),
            ft.head.hidden_dim,
            outputs,
            ft.head.dropout,
            prec,
        );
        let head_range = start..layout.total();
        let shift = match labels.as_ref() {
            Labels::Values(v) if !v.is_empty() => {
                v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
            }
            _ => 0.0,
        };
        Ok(FinetuneModel {
            dev: Cpu,
            backbone,
            layout,
            head,
            head_range,
            counts: ClassCounts::new(outputs),
            labels,
            shift,
            trainable: true,
            lora,
            pairs: PairSums::default(),
        })
    }

    /// The modules LoRA adapted (empty without LoRA).
    pub fn lora_modules(&self) -> &[String] {
        self.lora.as_ref().map_or(&[], |(m, _)| m.as_slice())
    }

    /// The head's forward and loss of `batch` from the pooled embeddings: (loss sum, count,
    /// d(loss sum)·scale w.r.t. the head's output when `scale` is given).
    fn head_loss(
        &mut self,
        params: &Vec<f32>,
        batch: &Batch,
        pooled: &[f32],
        key: Option<RngKey>,
        scale: Option<f32>,
    ) -> Result<(LossSum, Vec<f32>)> {
        let b = batch.batch_size;
        let dev = &self.dev;
        self.head.forward(dev, params, pooled, b, key.map(head_key));
        let o = self.head.outputs();
        let mut dy = dev.zeros(b * o);
        let label = |c: u64| -> Result<usize> {
            if (c as usize) < self.labels.len() {
                Ok(c as usize)
            } else {
                Err(ModelError::Batch(format!("cell {c} has no label")))
            }
        };
        let loss = match self.labels.as_ref() {
            Labels::Classes { of_cell, .. } => {
                let targets = batch
                    .cells
                    .iter()
                    .map(|&c| label(c).map(|i| of_cell[i] as i64))
                    .collect::<Result<Vec<i64>>>()?;
                let dloss = scale.map_or(0.0, |s| b as f64 * s as f64);
                let mean = dev.cross_entropy(&mut dy, &self.head.y, &targets, b, o, dloss)?;
                LossSum {
                    sum: mean * b as f64,
                    count: b as f64,
                }
            }
            Labels::Values(v) => {
                let targets = batch
                    .cells
                    .iter()
                    .map(|&c| label(c).map(|i| v[i]))
                    .collect::<Result<Vec<f32>>>()?;
                let t = dev.upload(&targets);
                let dscale = scale.unwrap_or(0.0) as f64;
                let want = scale.is_some().then_some(&mut dy);
                let sum = dev.squared_error_sum(want, &self.head.y, &t, dscale)?;
                LossSum {
                    sum,
                    count: (b * o) as f64,
                }
            }
        };
        Ok((loss, dy))
    }
}

/// The head's dropout key: apart from every backbone layer's.
fn head_key(k: RngKey) -> RngKey {
    RngKey::new(k.seed, k.step, k.layer ^ 0x4845_4144_0000_0000)
}

impl ScModel for FinetuneModel {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn train_batch(
        &mut self,
        params: &Vec<f32>,
        grads: &mut Vec<f32>,
        batch: &Batch,
        key: RngKey,
        scale: f32,
        ready: &mut GradsReady,
    ) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let bkey = self.trainable.then_some(key);
        let pooled = self.backbone.pooled_forward(params, batch, bkey)?;
        let (loss, dy) = self.head_loss(params, batch, &pooled, Some(key), Some(scale))?;
        let dpooled = self
            .head
            .backward(&self.dev, params, grads, &dy, head_key(key));
        if self.trainable {
            self.backbone
                .pooled_backward(params, grads, &dpooled, key, ready)?;
        }
        Ok(loss)
    }

    fn eval_batch(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let pooled = self.backbone.pooled_forward(params, batch, None)?;
        let (loss, _) = self.head_loss(params, batch, &pooled, None, None)?;
        let o = self.head.outputs();
        let y = self.dev.download(&self.head.y);
        match self.labels.as_ref() {
            Labels::Classes { of_cell, .. } => {
                for (r, &c) in batch.cells.iter().enumerate() {
                    let row = &y[r * o..(r + 1) * o];
                    let pred = row
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (k, &v)| {
                            if v > best.1 {
                                (k, v)
                            } else {
                                best
                            }
                        })
                        .0;
                    self.counts.add(of_cell[c as usize] as usize, pred);
                }
            }
            Labels::Values(v) => {
                for (r, &c) in batch.cells.iter().enumerate() {
                    self.pairs
                        .add(y[r] as f64 - self.shift, v[c as usize] as f64 - self.shift);
                }
            }
        }
        Ok(loss)
    }

    fn cell_embeddings(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<Vec<f32>> {
        self.backbone.cell_embeddings(params, batch)
    }

    fn embedding_dim(&self) -> usize {
        self.backbone.embedding_dim()
    }

    fn pooled_forward(
        &mut self,
        params: &Vec<f32>,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<Vec<f32>> {
        self.backbone.pooled_forward(params, batch, key)
    }

    fn pooled_backward(
        &mut self,
        params: &Vec<f32>,
        grads: &mut Vec<f32>,
        dpooled: &[f32],
        key: RngKey,
        ready: &mut GradsReady,
    ) -> Result<()> {
        self.backbone
            .pooled_backward(params, grads, dpooled, key, ready)
    }

    fn take_eval_sums(&mut self) -> Vec<f64> {
        match self.labels.as_ref() {
            Labels::Classes { .. } => {
                let n = self.counts.tp.len();
                std::mem::replace(&mut self.counts, ClassCounts::new(n)).to_sums()
            }
            Labels::Values(_) => std::mem::take(&mut self.pairs).to_sums(),
        }
    }

    fn eval_metrics(&self, sums: &[f64]) -> Vec<(&'static str, f64)> {
        match self.labels.as_ref() {
            Labels::Classes { .. } => {
                let c = ClassCounts::from_sums(sums);
                vec![(VAL_ACCURACY, c.accuracy()), (VAL_F1_MACRO, c.macro_f1())]
            }
            Labels::Values(_) => {
                let p = PairSums::from_sums(sums);
                vec![(VAL_MSE, p.mse()), (VAL_PEARSON, p.pearson())]
            }
        }
    }

    fn head_range(&self) -> Option<Range<usize>> {
        Some(self.head_range.clone())
    }

    fn set_backbone_trainable(&mut self, trainable: bool) {
        // Under LoRA backward always runs into the adapters (scModelForge: freezing is a
        // no-op); the base weights stay frozen whatever this says.
        self.trainable = trainable || self.lora.is_some();
    }

    fn lora_trainable(&self) -> Option<Vec<Range<usize>>> {
        self.lora.as_ref().map(|(_, r)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    //! Finite-difference checks of the fine-tuning model's backward: the task head (hidden
    //! layer, GELU, output layer, loss) and the backbone's new path from the pooled embedding
    //! (pooling, `encoder.norm` over the pooled rows, the encoder) into every parameter.

    use super::*;
    use configs::scmodelforge::{ModelConfig, Pooling, TaskHeadConfig};
    use data::masking::IGNORE_INDEX;

    use crate::model::{self, DataSpec};

    fn batch() -> Batch {
        // Two cells of 5 tokens, the second padded after 3; ids from a vocabulary of 20.
        let (b, t) = (2, 5);
        let gene_ids = vec![2, 7, 9, 4, 11, 2, 5, 13, 0, 0];
        let values = vec![0.0, 1.5, 0.7, 2.0, 0.3, 0.0, 0.9, 1.1, 0.0, 0.0];
        let attention_mask = vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        Batch {
            epoch: 0,
            step: 0,
            batch_size: b,
            seq_len: t,
            cells: vec![0, 1],
            gene_ids,
            values: values.clone(),
            target_values: values,
            labels: vec![IGNORE_INDEX; b * t],
            attention_mask,
        }
    }

    fn model(pooling: Pooling, labels: Labels, hidden: Option<usize>) -> FinetuneModel {
        model_with(pooling, labels, hidden, None)
    }

    fn model_with(
        pooling: Pooling,
        labels: Labels,
        hidden: Option<usize>,
        lora: Option<configs::scmodelforge::LoRAConfig>,
    ) -> FinetuneModel {
        let cfg = ModelConfig {
            hidden_dim: 8,
            num_layers: 1,
            num_heads: 2,
            ffn_dim: Some(16),
            dropout: 0.0,
            max_seq_len: 16,
            pooling,
            ..ModelConfig::default()
        };
        let spec = DataSpec {
            vocab_size: 20,
            values_are_bins: false,
        };
        let trunk = model::build(&cfg, spec, Precision::F32).unwrap();
        let task = match labels {
            Labels::Classes { .. } => HeadTask::Classification,
            Labels::Values(_) => HeadTask::Regression,
        };
        let ft = FinetuneConfig {
            head: TaskHeadConfig {
                task,
                hidden_dim: hidden,
                dropout: 0.0,
                ..TaskHeadConfig::default()
            },
            lora: lora.unwrap_or_default(),
            ..FinetuneConfig::default()
        };
        FinetuneModel::new(trunk, &ft, Arc::new(labels), Precision::F32).unwrap()
    }

    /// Every analytic gradient of the loss sum against central differences in f64 of the f32
    /// forward, on a spread of parameters of every tensor.
    fn check(mut m: FinetuneModel) {
        let b = batch();
        let layout = m.layout().clone();
        let mut params: Vec<f32> = layout.init_host(3);
        // Larger head weights make the head's share of the gradient visible.
        for p in &mut params[m.head_range().unwrap()] {
            *p *= 3.0;
        }
        // LoRA's B starts at zero; non-zero values put gradient into A too.
        for e in layout
            .entries()
            .iter()
            .filter(|e| e.name.contains("lora_B"))
        {
            for (i, p) in params[e.view().range()].iter_mut().enumerate() {
                *p = 0.3 * ((i * 7 + e.offset) as f32).sin();
            }
        }
        let mut grads = vec![0.0f32; layout.total()];
        let key = RngKey::new(1, 2, 3);
        let loss = m
            .train_batch(&params, &mut grads, &b, key, 1.0, &mut |_, _| {})
            .unwrap();
        let eval = m.eval_batch(&params, &b).unwrap();
        assert!((loss.sum - eval.sum).abs() < 1e-5 * loss.sum.abs().max(1.0));
        // Central differences at h and h/2, Richardson-combined (error O(h⁴)): the value
        // projection feeds values up to 2 through a LayerNorm of width 8, whose curvature
        // spoils a plain difference at any h that f32 rounding of the loss allows.
        let h = 4e-3f32;
        let mut checked = 0;
        // The encoder's frozen linear weights get no dW under LoRA (the trainer drops those
        // gradients anyway); every trained parameter, and the other frozen ones, are checked.
        let lora = m.lora_trainable().is_some();
        let frozen_weight = |name: &str| {
            lora && !name.contains("lora_")
                && [
                    "in_proj_weight",
                    "out_proj.weight",
                    "linear1.weight",
                    "linear2.weight",
                ]
                .iter()
                .any(|w| name.starts_with("encoder.layers.") && name.ends_with(w))
        };
        for e in layout.entries() {
            let r = e.view().range();
            if frozen_weight(&e.name) {
                assert!(
                    grads[r].iter().all(|g| *g == 0.0),
                    "{}: dW computed",
                    e.name
                );
                continue;
            }
            let step = (r.len() / 5).max(1);
            for i in r.step_by(step) {
                let old = params[i];
                let mut diff = |d: f32| {
                    params[i] = old + d;
                    let up = m.eval_batch(&params, &b).unwrap().sum;
                    params[i] = old - d;
                    let down = m.eval_batch(&params, &b).unwrap().sum;
                    params[i] = old;
                    (up - down) / (2.0 * (old + d - old) as f64)
                };
                let (d1, d2) = (diff(h), diff(h / 2.0));
                let num = (4.0 * d2 - d1) / 3.0;
                let ana = grads[i] as f64;
                assert!(
                    (num - ana).abs() <= 2e-3 + 2e-2 * num.abs().max(ana.abs()),
                    "{}[{}]: numeric {num} vs analytic {ana}",
                    e.name,
                    i - e.offset
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "{checked} values checked");
        let _ = m.take_eval_sums();
    }

    fn classes() -> Labels {
        Labels::Classes {
            names: vec!["a".into(), "b".into(), "c".into()],
            of_cell: vec![2, 0],
        }
    }

    #[test]
    fn classification_gradients_match_finite_differences_with_cls_pooling() {
        check(model(Pooling::Cls, classes(), Some(6)));
    }

    #[test]
    fn classification_gradients_match_finite_differences_with_mean_pooling() {
        check(model(Pooling::Mean, classes(), None));
    }

    #[test]
    fn regression_gradients_match_finite_differences() {
        check(model(
            Pooling::Mean,
            Labels::Values(vec![0.7, -1.2]),
            Some(4),
        ));
    }

    fn lora(
        dropout: f64,
        bias: configs::scmodelforge::LoraBias,
    ) -> configs::scmodelforge::LoRAConfig {
        configs::scmodelforge::LoRAConfig {
            enabled: true,
            rank: 2,
            alpha: 4,
            dropout,
            target_modules: None,
            bias,
        }
    }

    #[test]
    fn lora_gradients_match_finite_differences() {
        // Adapter dropout 0 here: the eval forward the differences use has no dropout, and
        // the kernels' tests check the adapter with dropout on against its own forward.
        let m = model_with(
            Pooling::Mean,
            classes(),
            Some(6),
            Some(lora(0.0, configs::scmodelforge::LoraBias::None)),
        );
        assert_eq!(m.lora_modules().len(), 3);
        check(m);
    }

    #[test]
    fn lora_trains_the_adapters_and_the_biases_its_bias_setting_names() {
        use configs::scmodelforge::LoraBias;
        let names = |bias| {
            let m = model_with(Pooling::Cls, classes(), None, Some(lora(0.05, bias)));
            let ranges = m.lora_trainable().unwrap();
            let mut names: Vec<String> = m
                .layout()
                .entries()
                .iter()
                .filter(|e| ranges.contains(&e.view().range()))
                .map(|e| e.name.clone())
                .collect();
            names.sort();
            names
        };
        let adapters: Vec<String> = ["self_attn.out_proj", "linear1", "linear2"]
            .iter()
            .flat_map(|m| ["lora_A", "lora_B"].map(|w| format!("encoder.layers.0.{m}.{w}.weight")))
            .collect();
        let mut want = adapters.clone();
        want.sort();
        assert_eq!(names(LoraBias::None), want);
        let only = names(LoraBias::LoraOnly);
        for b in ["self_attn.out_proj", "linear1", "linear2"] {
            assert!(
                only.contains(&format!("encoder.layers.0.{b}.bias")),
                "{only:?}"
            );
        }
        assert_eq!(only.len(), want.len() + 3);
        let all = names(LoraBias::All);
        assert!(
            all.contains(&"encoder.layers.0.norm1.bias".to_string()),
            "{all:?}"
        );
        assert!(
            all.contains(&"encoder.layers.0.self_attn.in_proj_bias".to_string()),
            "{all:?}"
        );
        assert!(all.len() > only.len());
        // Freezing does nothing under LoRA (backward must reach the adapters).
        let mut m = model_with(
            Pooling::Cls,
            classes(),
            None,
            Some(lora(0.0, LoraBias::None)),
        );
        m.set_backbone_trainable(false);
        let params: Vec<f32> = m.layout().init_host(5);
        let mut grads = vec![0.0f32; m.layout().total()];
        m.train_batch(
            &params,
            &mut grads,
            &batch(),
            RngKey::new(0, 0, 0),
            1.0,
            &mut |_, _| {},
        )
        .unwrap();
        let a = m
            .layout()
            .get("encoder.layers.0.linear1.lora_A.weight")
            .unwrap();
        // B = 0 at initialisation, so dA = 0 but dB is not.
        let b = m
            .layout()
            .get("encoder.layers.0.linear1.lora_B.weight")
            .unwrap();
        assert!(grads[a.view().range()].iter().all(|&g| g == 0.0));
        assert!(grads[b.view().range()].iter().any(|&g| g != 0.0));
    }

    #[test]
    fn a_frozen_backbone_gets_no_gradient_and_training_pooling_equals_embedding() {
        let mut m = model(Pooling::Mean, classes(), Some(6));
        let b = batch();
        let params: Vec<f32> = m.layout().init_host(5);
        let emb = m.cell_embeddings(&params, &b).unwrap();
        let pooled = m
            .pooled_forward(&params, &b, Some(RngKey::new(0, 0, 0)))
            .unwrap();
        for (x, y) in emb.iter().zip(&pooled) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        m.set_backbone_trainable(false);
        let mut grads = vec![0.0f32; m.layout().total()];
        m.train_batch(
            &params,
            &mut grads,
            &b,
            RngKey::new(0, 0, 0),
            1.0,
            &mut |_, _| {},
        )
        .unwrap();
        let head = m.head_range().unwrap();
        assert!(grads[..head.start].iter().all(|&g| g == 0.0));
        assert!(grads[head].iter().any(|&g| g != 0.0));
    }
}
