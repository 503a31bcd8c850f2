//! Which parameters take weight decay. scModelForge builds two AdamW parameter groups: every
//! parameter whose name contains "bias", "layer_norm", "LayerNorm" or "layernorm" gets
//! `weight_decay = 0`, the rest the configured decay (`training/optimizers.py`,
//! `build_optimizer`). anvil's parameter names are PyTorch's (`encoder.layers.0.norm1.weight`,
//! `...self_attn.out_proj.bias`), so the same rule on the same names gives the same groups.
//! [`Moments`] places the Adam state of the groups that train.

use std::ops::Range;

use kernels::ParamLayout;

/// Whether scModelForge's rule exempts the parameter `name` from weight decay.
pub fn decay_free(name: &str) -> bool {
    ["bias", "layer_norm", "LayerNorm", "layernorm"]
        .iter()
        .any(|k| name.contains(k))
}

/// The ranges of the flat parameter buffer that take no weight decay, sorted, adjacent ones
/// merged.
pub fn decay_free_ranges(layout: &ParamLayout) -> Vec<Range<usize>> {
    let mut entries: Vec<_> = layout
        .entries()
        .iter()
        .filter(|e| decay_free(&e.name))
        .map(|e| e.offset..e.offset + e.len())
        .collect();
    entries.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(entries.len());
    for r in entries {
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// Where the Adam moments of the trained parameters live. Normally they are laid out like the
/// parameters; under LoRA only the adapters, the trained biases and the head train, and the
/// moments hold just those ranges one after another (the frozen backbone has no optimizer
/// state, in memory or in checkpoints).
#[derive(Clone, Debug)]
pub struct Moments {
    /// (parameter range, index of its first moment), sorted.
    slots: Vec<(Range<usize>, usize)>,
    /// Length of each moment buffer.
    pub len: usize,
    /// The saved parameters at their moments' offsets (what a checkpoint's optimizer file holds).
    pub layout: ParamLayout,
}

impl Moments {
    /// Moments laid out like `layout`'s parameters (every parameter can train).
    pub fn full(layout: &ParamLayout) -> Self {
        Moments {
            slots: vec![(0..layout.total(), 0)],
            len: layout.total(),
            layout: layout.clone(),
        }
    }

    /// Moments for the `trained` ranges only, packed in order; `saved` is the layout of the
    /// parameters inside them.
    pub fn only(saved: &ParamLayout, trained: &[Range<usize>]) -> Self {
        let mut ranges = trained.to_vec();
        ranges.sort_by_key(|r| r.start);
        let (mut slots, mut len) = (Vec::with_capacity(ranges.len()), 0);
        for r in ranges {
            slots.push((r.clone(), len));
            len += r.len();
        }
        let mut m = Moments {
            slots,
            len,
            layout: ParamLayout::new(),
        };
        m.layout = saved.remapped(|e| m.at(e.offset), len);
        m
    }

    /// The moment index of parameter index `param` (which must lie in a trained range).
    pub fn at(&self, param: usize) -> usize {
        let (r, at) = self
            .slots
            .iter()
            .find(|(r, _)| r.contains(&param))
            .unwrap_or_else(|| panic!("parameter {param} has no optimizer state"));
        at + (param - r.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_moments_place_each_trained_range_after_the_previous() {
        let mut l = ParamLayout::new();
        let a = l.add("a", &[10], kernels::Init::Zeros);
        let b = l.add("b", &[5], kernels::Init::Zeros);
        let c = l.add("c", &[7], kernels::Init::Zeros);
        let d = l.add("d", &[3], kernels::Init::Zeros);
        let (ra, rc, rd) = (a.range(), c.range(), d.range());
        // c and d train (one range, with the alignment gap between them), a trains alone.
        let trained = [rc.start..rd.end, ra.clone()];
        let saved = l.subset(|e| e.name != "b");
        let m = Moments::only(&saved, &trained);
        assert_eq!(m.len, ra.len() + (rd.end - rc.start));
        assert_eq!(m.at(ra.start), 0);
        assert_eq!(m.at(rc.start), ra.len());
        assert_eq!(m.at(rd.start), ra.len() + (rd.start - rc.start));
        let offsets: Vec<(String, usize)> = m
            .layout
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.offset))
            .collect();
        assert_eq!(
            offsets,
            [
                ("a".to_string(), 0),
                ("c".to_string(), ra.len()),
                ("d".to_string(), ra.len() + (rd.start - rc.start))
            ]
        );
        assert_eq!(m.layout.total(), m.len);
        let full = Moments::full(&l);
        assert_eq!(
            (full.len, full.at(b.range().start)),
            (l.total(), b.range().start)
        );
    }
    use kernels::params::Init;

    #[test]
    fn biases_and_layer_norm_parameters_are_exempt_as_in_scmodelforge() {
        for name in [
            "encoder.layers.0.self_attn.in_proj_bias",
            "encoder.layers.0.linear1.bias",
            "head.layer_norm.weight",
            "embeddings.LayerNorm.weight",
        ] {
            assert!(decay_free(name), "{name}");
        }
        // scModelForge's rule matches names, not module types: nn.TransformerEncoderLayer's
        // norm1/norm2 weights keep their decay there, and so here.
        for name in [
            "encoder.layers.0.norm1.weight",
            "encoder.layers.0.self_attn.in_proj_weight",
            "gene_embedding.weight",
        ] {
            assert!(!decay_free(name), "{name}");
        }
    }

    #[test]
    fn ranges_cover_exactly_the_exempt_parameters() {
        let mut l = ParamLayout::default();
        l.add("a.weight", &[4], Init::Zeros);
        l.add("a.bias", &[2], Init::Zeros);
        l.add("b.in_proj_bias", &[3], Init::Zeros);
        l.add("b.weight", &[5], Init::Zeros);
        l.add("c.bias", &[1], Init::Zeros);
        let ranges = decay_free_ranges(&l);
        assert!(
            ranges.windows(2).all(|w| w[0].end < w[1].start),
            "{ranges:?}"
        );
        for e in l.entries() {
            for i in e.offset..e.offset + e.len() {
                let covered = ranges.iter().any(|r| r.contains(&i));
                assert_eq!(covered, decay_free(&e.name), "{} element {i}", e.name);
            }
        }
    }
}
