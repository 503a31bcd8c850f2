//! The modules moved from the worker (SavedLinear, RowNorm, NormHead, Stack) against central
//! finite differences in f64, through the CPU device.

use super::*;
use crate::gradcheck_tests::{assert_close, dot, fd, rand};
use crate::ops::SeqLayout;
use crate::params::ParamLayout;
use crate::rng::RngKey;
use crate::{Cpu, Precision};

const F32: Precision = Precision::F32;

/// Parameters with non-trivial LayerNorm affines and biases, so every gradient is exercised.
fn params(l: &ParamLayout, seed: u64) -> Vec<f64> {
    rand(l.total(), seed).iter().map(|v| v * 0.5).collect()
}

#[test]
fn norm_head_matches_fd_and_adds_into_its_rows() {
    let (d, out, n) = (4, 3, 6);
    let rows = [4usize, 1, 5];
    for tied in [false, true] {
        let mut l = ParamLayout::new();
        let table = Embedding::new(&mut l, "emb", out, d);
        let mut head: NormHead<Vec<f64>> = if tied {
            NormHead::tied(&mut l, "norm", "head", table.weight, d, out)
        } else {
            NormHead::new(&mut l, "norm", "head", d, out)
        };
        let p = params(&l, 1);
        let hidden = rand(n * d, 2);
        let r = rand(rows.len() * out, 3);
        let loss = |head: &mut NormHead<Vec<f64>>, p: &Vec<f64>, h: &Vec<f64>| {
            head.forward(&Cpu, F32, p, h, &rows);
            dot(&head.y, &r)
        };
        loss(&mut head, &p, &hidden);
        let mut grads = vec![0.0; l.total()];
        let start = rand(n * d, 4);
        let mut dh = start.clone();
        head.backward(&Cpu, F32, &p, &mut grads, &r, &rows, &mut dh);
        let added: Vec<f64> = dh.iter().zip(&start).map(|(a, b)| a - b).collect();
        let num = fd(&hidden, |h| loss(&mut head, &p, &h.to_vec()));
        assert_close("dhidden", &added, &num, 1e-6);
        assert!(added[..d]
            .iter()
            .chain(&added[2 * d..4 * d])
            .all(|&v| v == 0.0));
        let num = fd(&p, |pp| loss(&mut head, &pp.to_vec(), &hidden));
        assert_close("dparams", &grads, &num, 1e-6);
        // The norm alone over every row is what the head normalizes before projecting.
        let all = head.normalize(&Cpu, &p, &hidden, n);
        head.forward(&Cpu, F32, &p, &hidden, &[5]);
        let mut y = vec![0.0; out];
        head.proj
            .forward(&Cpu, F32, &p, &all[5 * d..].to_vec(), &mut y, 1);
        assert_close("normalize", &y, &head.y, 1e-12);
    }
}

#[test]
fn row_norm_then_saved_linear_matches_fd() {
    let (d, o, n) = (5, 3, 4);
    let mut l = ParamLayout::new();
    let mut norm: RowNorm<Vec<f64>> = RowNorm::new(&mut l, "norm", d);
    let mut lin: SavedLinear<Vec<f64>> = SavedLinear::new(&mut l, "proj", d, o);
    assert_eq!(
        l.entries()
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["norm.weight", "norm.bias", "proj.weight", "proj.bias"]
    );
    let p = params(&l, 11);
    let x = rand(n * d, 12);
    let r = rand(n * o, 13);
    let mut loss = |p: &Vec<f64>, x: &Vec<f64>| {
        norm.forward(&Cpu, p, x);
        lin.forward(&Cpu, F32, p, &norm.y);
        dot(&lin.y, &r)
    };
    loss(&p, &x);
    let num_x = fd(&x, |xx| loss(&p, &xx.to_vec()));
    let num_p = fd(&p, |pp| loss(&pp.to_vec(), &x));
    loss(&p, &x);
    let mut grads = vec![0.0; l.total()];
    let dn = lin.backward(&Cpu, F32, &p, &mut grads, &r);
    let dx = norm.backward(&Cpu, &p, &mut grads, &dn);
    assert_close("dx", &dx, &num_x, 1e-6);
    assert_close("dparams", &grads, &num_p, 1e-6);
    // A later call with fewer rows resizes what is kept.
    norm.forward(&Cpu, &p, &x[..d].to_vec());
    assert_eq!(norm.y.len(), d);
    assert_eq!(
        norm.backward(&Cpu, &p, &mut grads, &r[..d].to_vec()).len(),
        d
    );
}

fn stack_config(dropout: f64) -> EncoderLayerConfig {
    EncoderLayerConfig {
        d_model: 8,
        nhead: 2,
        dim_feedforward: 12,
        dropout,
        activation: Activation::Gelu,
        layer_norm_eps: LN_EPS,
        causal: false,
        precision: F32,
    }
}

#[test]
fn stack_matches_fd_and_hears_each_layer_once_done() {
    let (b, t, e) = (2, 3, 8);
    let mut l = ParamLayout::new();
    let mut stack: Stack<Vec<f64>> = Stack::new(&mut l, "enc", 2, stack_config(0.2)).expect("ok");
    let p = params(&l, 21);
    let x = rand(b * t * e, 22);
    let r = rand(b * t * e, 23);
    let mut pad = vec![false; b * t];
    pad[5] = true;
    let seqs = padded(b, t, &pad);
    let key = RngKey::new(1, 2, 3);
    let mut loss = |p: &Vec<f64>, x: &Vec<f64>| {
        let y = stack.forward(&Cpu, p, x, &seqs, Some(key)).expect("shapes");
        dot(y, &r)
    };
    let num_x = fd(&x, |xx| loss(&p, &xx.to_vec()));
    let num_p = fd(&p, |pp| loss(&pp.to_vec(), &x));
    loss(&p, &x);
    let mut grads = vec![0.0; l.total()];
    let mut heard = Vec::new();
    let dx = stack
        .backward(&Cpu, &p, &mut grads, &r, key, &mut |range, g: &[f64]| {
            heard.push((range, g.to_vec()))
        })
        .clone();
    assert_close("dx", &dx, &num_x, 1e-6);
    assert_close("dparams", &grads, &num_p, 1e-6);
    // Last layer first, each with the range of exactly its own parameters (and their final
    // gradients).
    let names_in = |range: &std::ops::Range<usize>| {
        let es = l.entries();
        es.iter()
            .filter(|e| range.contains(&e.offset))
            .map(|e| {
                assert!(
                    e.offset + e.len() <= range.end,
                    "{} crosses the range",
                    e.name
                );
                e.name.clone()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(heard.len(), 2);
    for (i, prefix) in [(0, "enc.1."), (1, "enc.0.")] {
        let names = names_in(&heard[i].0);
        assert_eq!(names.len(), 12);
        assert!(names.iter().all(|n| n.starts_with(prefix)), "{names:?}");
    }
    for (range, g) in &heard {
        assert_eq!(&grads[range.clone()], &g[..]);
    }
    // Evaluation (no key) runs without dropout: the same as a stack built with dropout 0.
    let mut l0 = ParamLayout::new();
    let mut plain: Stack<Vec<f64>> = Stack::new(&mut l0, "enc", 2, stack_config(0.0)).expect("ok");
    let eval = stack
        .forward(&Cpu, &p, &x, &seqs, None)
        .expect("ok")
        .clone();
    let want = plain.forward(&Cpu, &p, &x, &seqs, Some(key)).expect("ok");
    assert_eq!(&eval, want);
    assert!(Stack::<Vec<f64>>::new(
        &mut l0,
        "bad",
        1,
        EncoderLayerConfig {
            nhead: 3,
            ..stack_config(0.0)
        }
    )
    .is_err());
}

fn padded(b: usize, t: usize, pad: &[bool]) -> SeqLayout {
    SeqLayout::Padded {
        batch: b,
        seq: t,
        key_pad: Some(pad.to_vec()),
    }
}

/// Packed sequences of lengths 3, 0, 2, 1 (with causal attention too): the gradients match
/// finite differences with dropout on; with dropout off, the output and every gradient equal
/// the padded layout's on the real rows (padding rows given no gradient).
#[test]
fn packed_stack_matches_fd_and_the_padded_stack() {
    let (lens, t, e) = ([3usize, 0, 2, 1], 3, 8);
    let seqs = SeqLayout::packed(lens);
    let n = seqs.rows();
    let (mut pad, mut real) = (vec![true; lens.len() * t], Vec::new());
    for (b, &l) in lens.iter().enumerate() {
        for j in 0..l {
            pad[b * t + j] = false;
            real.push(b * t + j);
        }
    }
    let seqs_padded = padded(lens.len(), t, &pad);
    for causal in [false, true] {
        let cfg = |dropout| EncoderLayerConfig {
            causal,
            ..stack_config(dropout)
        };
        let mut l = ParamLayout::new();
        let mut stack: Stack<Vec<f64>> = Stack::new(&mut l, "enc", 2, cfg(0.2)).expect("ok");
        let p = params(&l, 61);
        let (x, r) = (rand(n * e, 62), rand(n * e, 63));
        let key = RngKey::new(8, 9, 10);
        let mut loss = |p: &Vec<f64>, x: &Vec<f64>| {
            let y = stack.forward(&Cpu, p, x, &seqs, Some(key)).expect("shapes");
            dot(y, &r)
        };
        let num_x = fd(&x, |xx| loss(&p, &xx.to_vec()));
        let num_p = fd(&p, |pp| loss(&pp.to_vec(), &x));
        loss(&p, &x);
        let mut grads = vec![0.0; l.total()];
        let dx = stack
            .backward(&Cpu, &p, &mut grads, &r, key, &mut |_, _: &[f64]| {})
            .clone();
        assert_close("packed dx", &dx, &num_x, 1e-6);
        assert_close("packed dparams", &grads, &num_p, 1e-6);

        // Dropout off: packed and padded agree on the real rows.
        let mut l0 = ParamLayout::new();
        let mut plain: Stack<Vec<f64>> = Stack::new(&mut l0, "enc", 2, cfg(0.0)).expect("ok");
        let y = plain
            .forward(&Cpu, &p, &x, &seqs, Some(key))
            .expect("ok")
            .clone();
        let mut gp = vec![0.0; l0.total()];
        let dxp = plain
            .backward(&Cpu, &p, &mut gp, &r, key, &mut |_, _: &[f64]| {})
            .clone();
        let spread = |v: &[f64]| {
            let mut out = vec![0.0; lens.len() * t * e];
            crate::ops::scatter_rows(&mut out, v, &real, e, false);
            out
        };
        let (xq, rq) = (spread(&x), spread(&r));
        let yq = plain
            .forward(&Cpu, &p, &xq, &seqs_padded, Some(key))
            .expect("ok")
            .clone();
        let mut gq = vec![0.0; l0.total()];
        let dxq = plain
            .backward(&Cpu, &p, &mut gq, &rq, key, &mut |_, _: &[f64]| {})
            .clone();
        assert_close("output", &spread(&y), &spread_real(&yq, &real, e), 1e-12);
        assert_close("dx", &spread(&dxp), &spread_real(&dxq, &real, e), 1e-12);
        assert_close("dparams", &gp, &gq, 1e-12);
    }
}

/// `v`'s rows `real` kept in place, every other row zero.
fn spread_real(v: &[f64], real: &[usize], e: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for &r in real {
        out[r * e..(r + 1) * e].copy_from_slice(&v[r * e..(r + 1) * e]);
    }
    out
}

#[test]
fn empty_stack_passes_through() {
    let mut l = ParamLayout::new();
    let mut stack: Stack<Vec<f64>> = Stack::new(&mut l, "enc", 0, stack_config(0.1)).expect("ok");
    let x = rand(2 * 8, 31);
    let y = stack
        .forward(&Cpu, &vec![], &x, &SeqLayout::packed([2]), None)
        .expect("ok");
    assert_eq!(y, &x);
    let dx = stack.backward(
        &Cpu,
        &vec![],
        &mut vec![],
        &x,
        RngKey::new(0, 0, 0),
        &mut |_, _| panic!("no layers, nothing to hear"),
    );
    assert_eq!(dx, &x);
}

fn lora(targets: &[&str], dropout: f64) -> LoraSpec {
    LoraSpec {
        rank: 3,
        alpha: 6.0,
        dropout,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

#[test]
fn lora_adapted_stack_matches_fd_with_dropout_in_layer_and_adapter() {
    let (b, t, e) = (2, 3, 8);
    let mut l = ParamLayout::new();
    let mut stack: Stack<Vec<f64>> = Stack::new(&mut l, "enc", 2, stack_config(0.2)).expect("ok");
    let base = l.total();
    let adapted = stack
        .attach_lora(&mut l, &lora(&["out_proj", "linear1", "linear2"], 0.3))
        .expect("targets exist");
    assert_eq!(adapted.len(), 6);
    assert_eq!(adapted[0], "enc.0.self_attn.out_proj");
    // The adapters' parameters come after the base model's, named as peft saves them.
    let names: Vec<String> = l
        .entries()
        .iter()
        .filter(|x| x.offset >= base)
        .map(|x| x.name.clone())
        .collect();
    assert_eq!(names.len(), 12);
    assert_eq!(names[0], "enc.0.self_attn.out_proj.lora_A.weight");
    assert_eq!(names[1], "enc.0.self_attn.out_proj.lora_B.weight");
    // Random (non-zero) B, so every adapter path carries gradient.
    let p = params(&l, 41);
    let x = rand(b * t * e, 42);
    let r = rand(b * t * e, 43);
    let mut pad = vec![false; b * t];
    pad[4] = true;
    let seqs = padded(b, t, &pad);
    let key = RngKey::new(5, 6, 7);
    let mut loss = |p: &Vec<f64>, x: &Vec<f64>| {
        let y = stack.forward(&Cpu, p, x, &seqs, Some(key)).expect("shapes");
        dot(y, &r)
    };
    let num_x = fd(&x, |xx| loss(&p, &xx.to_vec()));
    let num_p = fd(&p, |pp| loss(&pp.to_vec(), &x));
    let with_adapters = loss(&p, &x);
    // B = 0 (peft's initialisation) makes the adapted stack the base stack.
    let mut p0 = p.clone();
    for x in l.entries().iter().filter(|x| x.name.contains("lora_B")) {
        p0[x.offset..x.offset + x.len()].fill(0.0);
    }
    let got = loss(&p0, &x);
    loss(&p, &x);
    let mut grads = vec![0.0; l.total()];
    let dx = stack
        .backward(&Cpu, &p, &mut grads, &r, key, &mut |_, _: &[f64]| {})
        .clone();
    assert_close("dx", &dx, &num_x, 1e-6);
    // Under LoRA the base linear weights are frozen: their dW is not computed (left at zero);
    // every other gradient (adapters, biases, norms) matches the finite differences.
    let frozen_weight = |name: &str| {
        [
            "in_proj_weight",
            "out_proj.weight",
            "linear1.weight",
            "linear2.weight",
        ]
        .iter()
        .any(|w| name.ends_with(w))
            && !name.contains("lora_")
    };
    for x in l.entries() {
        let (g, n) = (
            &grads[x.offset..x.offset + x.len()],
            &num_p[x.offset..x.offset + x.len()],
        );
        if frozen_weight(&x.name) {
            assert!(g.iter().all(|v| *v == 0.0), "{}: dW computed", x.name);
            assert!(
                n.iter().any(|v| v.abs() > 1e-6),
                "{}: FD sees no gradient",
                x.name
            );
        } else {
            assert_close(&x.name, g, n, 1e-6);
        }
    }
    for x in l.entries().iter().filter(|x| x.offset >= base) {
        let g = &grads[x.offset..x.offset + x.len()];
        assert!(g.iter().all(|v| *v != 0.0), "{}: {g:?}", x.name);
    }
    let mut l0 = ParamLayout::new();
    let mut plain: Stack<Vec<f64>> = Stack::new(&mut l0, "enc", 2, stack_config(0.2)).expect("ok");
    let want = dot(
        plain
            .forward(&Cpu, &p[..base].to_vec(), &x, &seqs, Some(key))
            .expect("ok"),
        &r,
    );
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!((with_adapters - want).abs() > 1e-3);
}

#[test]
fn lora_merged_weights_give_the_adapted_models_evaluation_output() {
    let (b, t, e) = (2, 4, 8);
    let mut l = ParamLayout::new();
    let mut stack: Stack<Vec<f64>> = Stack::new(&mut l, "enc", 2, stack_config(0.1)).expect("ok");
    let base = l.total();
    stack
        .attach_lora(&mut l, &lora(&["linear2", "enc.1.linear1"], 0.2))
        .expect("targets exist");
    assert!(stack.layers[0].lora.linear1.is_none());
    assert!(stack.layers[1].lora.linear1.is_some());
    assert!(stack.layers[0].lora.out_proj.is_none());
    let p = params(&l, 51);
    let x = rand(b * t * e, 52);
    let seqs = SeqLayout::packed([t; 2]);
    let adapted = stack
        .forward(&Cpu, &p, &x, &seqs, None)
        .expect("ok")
        .clone();
    // Fold each adapter into its base weight and run the plain stack.
    let mut merged = p[..base].to_vec();
    for layer in &stack.layers {
        for (lin, ad) in [
            (&layer.linear1, &layer.lora.linear1),
            (&layer.linear2, &layer.lora.linear2),
        ] {
            if let Some(ad) = ad {
                let w = lin.weight.range();
                let (ar, br) = (ad.a.weight.range(), ad.b.weight.range());
                let (i, r) = (ad.a.in_features, ad.a.out_features);
                let m = lora::merge_weight(&p[w.clone()], &p[ar], &p[br], i, r, ad.scale);
                merged[w].copy_from_slice(&m);
            }
        }
    }
    let mut l0 = ParamLayout::new();
    let mut plain: Stack<Vec<f64>> = Stack::new(&mut l0, "enc", 2, stack_config(0.1)).expect("ok");
    let want = plain.forward(&Cpu, &merged, &x, &seqs, None).expect("ok");
    assert_close("merged", &adapted, want, 1e-10);
    let unmerged = plain
        .forward(&Cpu, &p[..base].to_vec(), &x, &seqs, None)
        .expect("ok")
        .clone();
    assert!(adapted
        .iter()
        .zip(&unmerged)
        .any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn lora_target_matching_no_module_is_an_error_naming_it() {
    let mut l = ParamLayout::new();
    let mut stack: Stack<Vec<f64>> = Stack::new(&mut l, "enc", 1, stack_config(0.0)).expect("ok");
    let err = stack
        .attach_lora(&mut l, &lora(&["linear1", "in_proj", "q_proj"], 0.0))
        .unwrap_err();
    assert!(err.contains("in_proj, q_proj"), "{err}");
    assert!(
        err.contains("self_attn.out_proj, linear1, linear2"),
        "{err}"
    );
}
