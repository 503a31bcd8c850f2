//! Which parameters take weight decay. scModelForge builds two AdamW parameter groups: every
//! parameter whose name contains "bias", "layer_norm", "LayerNorm" or "layernorm" gets
//! `weight_decay = 0`, the rest the configured decay (`training/optimizers.py`,
//! `build_optimizer`). anvil's parameter names are PyTorch's (`encoder.layers.0.norm1.weight`,
//! `...self_attn.out_proj.bias`), so the same rule on the same names gives the same groups.

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

#[cfg(test)]
mod tests {
    use super::*;
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
