//! Pieces the three architectures share: the token embedding (gene + learned position +
//! expression-value projection), a stack of pre-norm encoder layers with cached activation
//! arenas, and a layer norm + linear head over a subset of rows.

use configs::scmodelforge::{Activation as CfgActivation, ModelConfig};
use data::Batch;
use kernels::modules::{EncoderActs, EncoderLayerConfig, LayerNorm, TransformerEncoderLayer};
use kernels::ops::{self, Activation};
use kernels::rng::RngKey;
use kernels::{Cpu, Init, ParamLayout, ParamView, Precision};

use super::{ModelError, Result};

/// Padded sequence lengths are rounded up to a multiple of this, so batches of similar length
/// share one activation arena (padding rows are masked keys and carry no gradient).
pub const ROUND_SEQ: usize = 16;
/// Arenas kept for recently seen (batch, seq) shapes.
const ARENA_CACHE: usize = 3;
/// PyTorch's nn.LayerNorm / nn.TransformerEncoderLayer default.
pub const LN_EPS: f64 = 1e-5;
/// Standard deviation of the embedding tables and the value projection at init.
pub const EMB_STD: f64 = 0.02;

pub fn activation(a: CfgActivation) -> Activation {
    match a {
        CfgActivation::Gelu => Activation::Gelu,
        CfgActivation::Relu => Activation::Relu,
    }
}

/// A batch re-laid to [b, t] with t rounded up to [`ROUND_SEQ`].
pub struct Padded {
    pub b: usize,
    pub t: usize,
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
    /// true = padding (PyTorch's key_padding_mask).
    pub pad: Vec<bool>,
    /// Position of each row-major token within its sequence.
    pub pos: Vec<u32>,
}

impl Padded {
    /// From per-token arrays of a [b, seq] batch.
    pub fn new(b: usize, seq: usize, ids: &[u32], values: &[f32], mask: &[u32]) -> Self {
        let t = seq.div_ceil(ROUND_SEQ).max(1) * ROUND_SEQ;
        let mut p = Padded {
            b,
            t,
            ids: vec![0; b * t],
            values: vec![0.0; b * t],
            pad: vec![true; b * t],
            pos: (0..b * t).map(|i| (i % t) as u32).collect(),
        };
        for r in 0..b {
            for j in 0..seq {
                let (src, dst) = (r * seq + j, r * t + j);
                p.ids[dst] = ids[src];
                p.values[dst] = values[src];
                p.pad[dst] = mask[src] == 0;
            }
        }
        p
    }

    pub fn from_batch(batch: &Batch) -> Self {
        Self::new(
            batch.batch_size,
            batch.seq_len,
            &batch.gene_ids,
            &batch.values,
            &batch.attention_mask,
        )
    }

    /// Row index in the padded layout of token (r, j) of the original [b, seq] layout.
    pub fn row(&self, r: usize, j: usize) -> usize {
        r * self.t + j
    }
}

/// gene embedding + learned position embedding + (optionally) Linear(1, dim) of the value.
pub struct TokenEmbedding {
    pub gene: ParamView,
    pub pos: ParamView,
    /// (weight [dim, 1], bias [dim]) of the expression-value projection.
    pub value: Option<(ParamView, ParamView)>,
    pub vocab: usize,
    pub max_len: usize,
    pub dim: usize,
}

impl TokenEmbedding {
    /// Registers `{prefix}gene_embedding`, `{prefix}position_embedding` and (when
    /// `use_values`) `{prefix}expression_projection`.
    pub fn new(
        l: &mut ParamLayout,
        prefix: &str,
        vocab: usize,
        max_len: usize,
        dim: usize,
        use_values: bool,
    ) -> Self {
        // Small N(0, 0.02) tables (BERT/GPT-2 init): Adam moves every parameter by about lr
        // per step whatever its scale, so unit-scale tables barely change in a short run.
        let gene = l.add(
            format!("{prefix}gene_embedding.weight"),
            &[vocab, dim],
            Init::Normal(EMB_STD),
        );
        let pos = l.add(
            format!("{prefix}position_embedding.weight"),
            &[max_len, dim],
            Init::Normal(EMB_STD),
        );
        let value = use_values.then(|| {
            (
                l.add(
                    format!("{prefix}expression_projection.weight"),
                    &[dim, 1],
                    Init::Normal(EMB_STD),
                ),
                l.add(
                    format!("{prefix}expression_projection.bias"),
                    &[dim],
                    Init::Zeros,
                ),
            )
        });
        TokenEmbedding {
            gene,
            pos,
            value,
            vocab,
            max_len,
            dim,
        }
    }

    /// Factor on the gene embedding.
    pub fn gene_scale(&self) -> f32 {
        1.0
    }

    /// out[n] = G[ids[n]] + P[pos[n]] + w·values[n] + b, for n over `ids`.
    pub fn forward(
        &self,
        params: &[f32],
        ids: &[u32],
        pos: &[u32],
        values: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let d = self.dim;
        let gs = self.gene_scale();
        let g = &params[self.gene.range()];
        let p = &params[self.pos.range()];
        for (n, row) in out.chunks_exact_mut(d).take(ids.len()).enumerate() {
            let (id, t) = (ids[n] as usize, pos[n] as usize);
            if id >= self.vocab {
                return Err(ModelError::Batch(format!(
                    "token id {id} outside the model vocabulary of {}",
                    self.vocab
                )));
            }
            if t >= self.max_len {
                return Err(ModelError::Batch(format!(
                    "position {t} beyond model.max_seq_len = {}",
                    self.max_len
                )));
            }
            let (gr, pr) = (&g[id * d..(id + 1) * d], &p[t * d..(t + 1) * d]);
            for k in 0..d {
                row[k] = gs * gr[k] + pr[k];
            }
            if let Some((w, b)) = self.value {
                let (w, b) = (&params[w.range()], &params[b.range()]);
                let v = values[n];
                for k in 0..d {
                    row[k] += w[k] * v + b[k];
                }
            }
        }
        Ok(())
    }

    /// Scatter-adds `dout` into the embedding tables; dw += Σ dout·v, db += Σ dout.
    pub fn backward(
        &self,
        grads: &mut [f32],
        ids: &[u32],
        pos: &[u32],
        values: &[f32],
        dout: &[f32],
    ) {
        let d = self.dim;
        let gs = self.gene_scale();
        for (n, dr) in dout.chunks_exact(d).take(ids.len()).enumerate() {
            let (id, t) = (ids[n] as usize, pos[n] as usize);
            let off = self.gene.offset + id * d;
            for k in 0..d {
                grads[off + k] += gs * dr[k];
            }
            let off = self.pos.offset + t * d;
            for k in 0..d {
                grads[off + k] += dr[k];
            }
        }
        if let Some((w, b)) = self.value {
            let mut dw = vec![0.0f32; d];
            let mut db = vec![0.0f32; d];
            for (n, dr) in dout.chunks_exact(d).take(ids.len()).enumerate() {
                let v = values[n];
                for k in 0..d {
                    dw[k] += dr[k] * v;
                    db[k] += dr[k];
                }
            }
            for k in 0..d {
                grads[w.offset + k] += dw[k];
                grads[b.offset + k] += db[k];
            }
        }
    }
}

/// nn.TransformerEncoder(norm_first layers) without its final norm: `num_layers` pre-norm
/// layers registered as `{prefix}.{i}.…`.
pub struct Stack {
    pub layers: Vec<TransformerEncoderLayer>,
    /// Each layer's parameters' range in the layout (a layer registers them contiguously).
    ranges: Vec<std::ops::Range<usize>>,
    /// The same layers with dropout 0, for evaluation.
    eval_layers: Vec<TransformerEncoderLayer>,
    pub dim: usize,
    arenas: Vec<Arena>,
}

struct Arena {
    b: usize,
    t: usize,
    acts: Vec<EncoderActs<Vec<f32>>>,
    ga: Vec<f32>,
    gb: Vec<f32>,
}

/// Dropout keys: the embedding dropout is "layer" 0, encoder layer i is i + 1 (plus `base`).
pub fn layer_key(key: RngKey, layer: u64) -> RngKey {
    RngKey::new(
        key.seed,
        key.step,
        key.layer.wrapping_mul(1024).wrapping_add(layer),
    )
}

impl Stack {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        l: &mut ParamLayout,
        prefix: &str,
        num_layers: usize,
        dim: usize,
        heads: usize,
        ffn: usize,
        dropout: f64,
        act: Activation,
        causal: bool,
        precision: Precision,
    ) -> Result<Self> {
        if dim == 0 || heads == 0 || !dim.is_multiple_of(heads) {
            return Err(ModelError::Config(format!(
                "hidden size {dim} must be a positive multiple of the number of heads {heads}"
            )));
        }
        let cfg = EncoderLayerConfig {
            d_model: dim,
            nhead: heads,
            dim_feedforward: ffn,
            dropout,
            activation: act,
            layer_norm_eps: LN_EPS,
            causal,
            precision,
        };
        let mut layers = Vec::with_capacity(num_layers);
        let mut ranges = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let start = l.total();
            layers.push(TransformerEncoderLayer::new(
                l,
                &format!("{prefix}.{i}"),
                cfg,
            )?);
            ranges.push(start..l.total());
        }
        let eval_layers = layers
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x.cfg.dropout = 0.0;
                x
            })
            .collect();
        Ok(Stack {
            layers,
            ranges,
            eval_layers,
            dim,
            arenas: Vec::new(),
        })
    }

    /// Runs the layers over x [b, t, dim]; `key` None = evaluation (no dropout). Returns the
    /// output [b, t, dim] (valid until the next call).
    pub fn forward(
        &mut self,
        params: &Vec<f32>,
        x: &Vec<f32>,
        b: usize,
        t: usize,
        pad: &[bool],
        key: Option<RngKey>,
    ) -> Result<&Vec<f32>> {
        let len = b * t * self.dim;
        let arena = arena(&mut self.arenas, &self.layers, self.dim, b, t);
        let layers = if key.is_some() {
            &self.layers
        } else {
            &self.eval_layers
        };
        let k0 = key.unwrap_or(RngKey::new(0, 0, 0));
        for (i, layer) in layers.iter().enumerate() {
            let (done, rest) = arena.acts.split_at_mut(i);
            let input = if i == 0 { x } else { &done[i - 1].out };
            layer.forward(
                &Cpu,
                params,
                &mut rest[0],
                input,
                Some(pad),
                layer_key(k0, i as u64 + 1),
            )?;
        }
        if layers.is_empty() {
            // No layers: the output is the input.
            arena.ga[..len].copy_from_slice(&x[..len]);
            return Ok(&arena.ga);
        }
        Ok(&arena.acts[layers.len() - 1].out)
    }

    /// Backward of the last training forward of shape (b, t): from dout [b, t, dim] returns
    /// dx [b, t, dim] (valid until the next call). Each finished layer's gradients go to `ready`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        params: &Vec<f32>,
        grads: &mut Vec<f32>,
        b: usize,
        t: usize,
        dout: &[f32],
        key: RngKey,
        ready: &mut super::GradsReady,
    ) -> &Vec<f32> {
        let arena = arena(&mut self.arenas, &self.layers, self.dim, b, t);
        let len = arena.ga.len();
        arena.ga.copy_from_slice(&dout[..len]);
        let ranges = &self.ranges;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            layer.backward(
                &Cpu,
                params,
                grads,
                &mut arena.acts[i],
                &arena.ga,
                &mut arena.gb,
                layer_key(key, i as u64 + 1),
            );
            ready(ranges[i].clone(), &grads[ranges[i].clone()]);
            std::mem::swap(&mut arena.ga, &mut arena.gb);
        }
        &arena.ga
    }
}

/// The activation arena for shape (b, t), most recently used last (allocated on first use; at
/// most `ARENA_CACHE` shapes kept). A free function over the fields, so callers can borrow the
/// layers beside it.
fn arena<'a>(
    arenas: &'a mut Vec<Arena>,
    layers: &[TransformerEncoderLayer],
    dim: usize,
    b: usize,
    t: usize,
) -> &'a mut Arena {
    if let Some(i) = arenas.iter().position(|a| a.b == b && a.t == t) {
        let a = arenas.remove(i);
        arenas.push(a);
    } else {
        if arenas.len() >= ARENA_CACHE {
            arenas.remove(0);
        }
        let acts = layers
            .iter()
            .map(|l| l.alloc_acts::<f32, Cpu>(&Cpu, b, t))
            .collect();
        let n = b * t * dim;
        arenas.push(Arena {
            b,
            t,
            acts,
            ga: vec![0.0; n],
            gb: vec![0.0; n],
        });
    }
    let last = arenas.len() - 1;
    &mut arenas[last]
}

/// LayerNorm followed by Linear over selected rows; keeps what backward needs.
pub struct NormHead {
    pub norm: LayerNorm,
    pub weight: ParamView,
    pub bias: ParamView,
    pub dim: usize,
    pub out: usize,
    // saved activations
    x: Vec<f32>,
    h: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    pub y: Vec<f32>,
    rows: usize,
}

impl NormHead {
    /// `norm_name` e.g. "encoder.norm"; `head_name` e.g. "gene_head".
    pub fn new(
        l: &mut ParamLayout,
        norm_name: &str,
        head_name: &str,
        dim: usize,
        out: usize,
    ) -> Self {
        let norm = LayerNorm::new(l, norm_name, dim, LN_EPS);
        let a = 1.0 / (dim as f64).sqrt();
        let weight = l.add(format!("{head_name}.weight"), &[out, dim], Init::Uniform(a));
        let bias = l.add(format!("{head_name}.bias"), &[out], Init::Uniform(a));
        NormHead {
            norm,
            weight,
            bias,
            dim,
            out,
            x: Vec::new(),
            h: Vec::new(),
            mean: Vec::new(),
            rstd: Vec::new(),
            y: Vec::new(),
            rows: 0,
        }
    }

    /// Like [`NormHead::new`], with the output projection's weight `weight` [out, dim] shared
    /// with another module (weight tying); only `{head_name}.bias` is registered.
    pub fn tied(
        l: &mut ParamLayout,
        norm_name: &str,
        head_name: &str,
        weight: ParamView,
        dim: usize,
        out: usize,
    ) -> Self {
        let norm = LayerNorm::new(l, norm_name, dim, LN_EPS);
        let bias = l.add(format!("{head_name}.bias"), &[out], Init::Zeros);
        NormHead {
            norm,
            weight,
            bias,
            dim,
            out,
            x: Vec::new(),
            h: Vec::new(),
            mean: Vec::new(),
            rstd: Vec::new(),
            y: Vec::new(),
            rows: 0,
        }
    }

    /// Gathers rows `rows` of `hidden` [*, dim], normalizes them and applies the linear head:
    /// `self.y` = [rows.len(), out].
    pub fn forward(&mut self, prec: Precision, params: &[f32], hidden: &[f32], rows: &[usize]) {
        let (d, m) = (self.dim, rows.len());
        self.rows = m;
        self.x.clear();
        for &r in rows {
            self.x.extend_from_slice(&hidden[r * d..(r + 1) * d]);
        }
        self.h.resize(m * d, 0.0);
        self.mean.resize(m, 0.0);
        self.rstd.resize(m, 0.0);
        self.y.resize(m * self.out, 0.0);
        if m == 0 {
            return;
        }
        ops::layernorm_forward(
            &mut self.h,
            &mut self.mean,
            &mut self.rstd,
            &self.x,
            &params[self.norm.weight.range()],
            &params[self.norm.bias.range()],
            m,
            d,
            self.norm.eps,
        );
        ops::linear_forward(
            prec,
            &mut self.y,
            &self.h,
            &params[self.weight.range()],
            Some(&params[self.bias.range()]),
            m,
            d,
            self.out,
        );
    }

    /// From dy [rows, out] (the last forward's rows): accumulates parameter gradients and adds
    /// the rows' input gradients into `dhidden` [*, dim] at `rows`.
    pub fn backward(
        &mut self,
        prec: Precision,
        params: &[f32],
        grads: &mut [f32],
        dy: &[f32],
        rows: &[usize],
        dhidden: &mut [f32],
    ) {
        let (d, m) = (self.dim, self.rows);
        if m == 0 {
            return;
        }
        let mut dh = vec![0.0f32; m * d];
        {
            let (w, b) = (self.weight, self.bias);
            let (gw, gb) = split2(grads, w, b);
            ops::linear_backward(
                prec,
                Some(&mut dh),
                false,
                gw,
                Some(gb),
                dy,
                &self.h,
                &params[w.range()],
                m,
                d,
                self.out,
            );
        }
        let mut dx = vec![0.0f32; m * d];
        let (g, bt) = (self.norm.weight, self.norm.bias);
        let (gg, gbt) = split2(grads, g, bt);
        ops::layernorm_backward(
            &mut dx,
            false,
            gg,
            gbt,
            &dh,
            &self.x,
            &self.mean,
            &self.rstd,
            &params[g.range()],
            m,
            d,
        );
        for (k, &r) in rows.iter().enumerate() {
            for (o, v) in dhidden[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&dx[k * d..(k + 1) * d])
            {
                *o += *v;
            }
        }
    }
}

/// Two disjoint mutable views of the gradient buffer.
pub fn split2(buf: &mut [f32], a: ParamView, b: ParamView) -> (&mut [f32], &mut [f32]) {
    if a.offset < b.offset {
        let (lo, hi) = buf.split_at_mut(b.offset);
        (&mut lo[a.range()], &mut hi[..b.len])
    } else {
        let (lo, hi) = buf.split_at_mut(a.offset);
        (&mut hi[..a.len], &mut lo[b.range()])
    }
}

/// Checks shared model sizes.
pub fn check_dims(cfg: &ModelConfig) -> Result<()> {
    if cfg.num_heads == 0 || !cfg.hidden_dim.is_multiple_of(cfg.num_heads) {
        return Err(ModelError::Config(format!(
            "model.hidden_dim = {} must be a multiple of model.num_heads = {}",
            cfg.hidden_dim, cfg.num_heads
        )));
    }
    if cfg.max_seq_len == 0 {
        return Err(ModelError::Config(
            "model.max_seq_len must be positive".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(ModelError::Config(format!(
            "model.dropout must be in [0, 1), got {}",
            cfg.dropout
        )));
    }
    Ok(())
}

/// Positions are clamped into the table for padding rows beyond `max_len` (never read).
pub fn clamp_positions(pos: &mut [u32], pad: &[bool], max_len: usize) {
    for (p, &is_pad) in pos.iter_mut().zip(pad) {
        if is_pad && *p as usize >= max_len {
            *p = (max_len - 1) as u32;
        }
    }
}

/// LayerNorm over every row of a [rows, dim] tensor, keeping what backward needs.
pub struct RowNorm {
    pub norm: LayerNorm,
    x: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    pub y: Vec<f32>,
}

impl RowNorm {
    pub fn new(l: &mut ParamLayout, name: &str, dim: usize) -> Self {
        RowNorm {
            norm: LayerNorm::new(l, name, dim, LN_EPS),
            x: Vec::new(),
            mean: Vec::new(),
            rstd: Vec::new(),
            y: Vec::new(),
        }
    }

    pub fn forward(&mut self, params: &[f32], x: &[f32]) {
        let d = self.norm.dim;
        let m = x.len() / d;
        self.x.clear();
        self.x.extend_from_slice(x);
        self.y.resize(m * d, 0.0);
        self.mean.resize(m, 0.0);
        self.rstd.resize(m, 0.0);
        if m > 0 {
            ops::layernorm_forward(
                &mut self.y,
                &mut self.mean,
                &mut self.rstd,
                &self.x,
                &params[self.norm.weight.range()],
                &params[self.norm.bias.range()],
                m,
                d,
                self.norm.eps,
            );
        }
    }

    /// dx [rows, dim] from dy (the last forward's rows).
    pub fn backward(&self, params: &[f32], grads: &mut [f32], dy: &[f32]) -> Vec<f32> {
        let d = self.norm.dim;
        let m = self.x.len() / d;
        let mut dx = vec![0.0f32; m * d];
        if m > 0 {
            let (g, b) = (self.norm.weight, self.norm.bias);
            let (gg, gb) = split2(grads, g, b);
            ops::layernorm_backward(
                &mut dx,
                false,
                gg,
                gb,
                dy,
                &self.x,
                &self.mean,
                &self.rstd,
                &params[g.range()],
                m,
                d,
            );
        }
        dx
    }
}

/// A plain linear layer over [rows, in] with PyTorch's init, saving its input.
pub struct SavedLinear {
    pub weight: ParamView,
    pub bias: ParamView,
    pub i: usize,
    pub o: usize,
    x: Vec<f32>,
    pub y: Vec<f32>,
}

impl SavedLinear {
    pub fn new(l: &mut ParamLayout, name: &str, i: usize, o: usize) -> Self {
        let a = 1.0 / (i as f64).sqrt();
        SavedLinear {
            weight: l.add(format!("{name}.weight"), &[o, i], Init::Uniform(a)),
            bias: l.add(format!("{name}.bias"), &[o], Init::Uniform(a)),
            i,
            o,
            x: Vec::new(),
            y: Vec::new(),
        }
    }

    pub fn forward(&mut self, prec: Precision, params: &[f32], x: &[f32]) {
        let n = x.len() / self.i;
        self.x.clear();
        self.x.extend_from_slice(x);
        self.y.resize(n * self.o, 0.0);
        if n > 0 {
            ops::linear_forward(
                prec,
                &mut self.y,
                &self.x,
                &params[self.weight.range()],
                Some(&params[self.bias.range()]),
                n,
                self.i,
                self.o,
            );
        }
    }

    pub fn backward(
        &self,
        prec: Precision,
        params: &[f32],
        grads: &mut [f32],
        dy: &[f32],
    ) -> Vec<f32> {
        let n = self.x.len() / self.i;
        let mut dx = vec![0.0f32; n * self.i];
        if n > 0 {
            let (gw, gb) = split2(grads, self.weight, self.bias);
            ops::linear_backward(
                prec,
                Some(&mut dx),
                false,
                gw,
                Some(gb),
                dy,
                &self.x,
                &params[self.weight.range()],
                n,
                self.i,
                self.o,
            );
        }
        dx
    }
}
