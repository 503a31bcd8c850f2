//! Compiles every CUDA kernel source with NVRTC for sm_80 (A100) and sm_90 (H100/H200), the
//! same way a worker does on a GPU, then assembles the PTX with `ptxas` and reports each hot
//! kernel's registers and spills. Needs no GPU: NVRTC and ptxas come from the
//! `nvidia-cuda-nvrtc-cu12` / `nvidia-cuda-nvcc-cu12` wheels (scripts/test.sh puts the first on
//! LD_LIBRARY_PATH and names the second in ANVIL_PTXAS). Without them the test says SKIPPED,
//! except under CI, where it fails.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

use kernels::backend::cuda::compile;

const ARCHS: &[(&str, &str)] = &[("compute_80", "sm_80"), ("compute_90", "sm_90")];

/// Kernels on the training step's hot path: a spill there is a performance bug.
const HOT: &[&str] = &[
    "attn_forward_32",
    "attn_forward_64",
    "attn_backward_dq_32",
    "attn_backward_dq_64",
    "attn_backward_dkdv_32",
    "attn_backward_dkdv_64",
    "layernorm_forward",
    "layernorm_backward_dx",
    "cross_entropy",
    "gelu_forward",
    "gelu_backward",
    "adam_segment",
    "conv_im2col",
    "conv_col2im",
    "maxpool_forward",
    "upsample_bilinear_forward",
];

fn unavailable(what: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required under CI (scripts/install-deps.sh installs it)");
    }
    eprintln!("SKIPPED: CUDA kernel compile check ({what})");
    false
}

fn nvrtc_present() -> bool {
    compile::nvrtc_available() || unavailable("libnvrtc.so not found on LD_LIBRARY_PATH")
}

fn ptxas() -> Option<PathBuf> {
    let p = std::env::var_os("ANVIL_PTXAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("ptxas"));
    Command::new(&p).arg("--version").output().ok().map(|_| p)
}

/// Per kernel: (registers, spill store bytes, spill load bytes), parsed from `ptxas -v`.
fn ptxas_report(ptxas: &PathBuf, ptx: &str, sm: &str) -> Vec<(String, u32, u32, u32)> {
    let dir = std::env::temp_dir().join(format!("anvil-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{sm}.ptx"));
    std::fs::write(&file, ptx).expect("write ptx");
    let out = Command::new(ptxas)
        .args(["-v", &format!("-arch={sm}"), "-o"])
        .arg(dir.join(format!("{sm}.cubin")))
        .arg(&file)
        .output()
        .expect("run ptxas");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ptxas {sm} failed:\n{log}");
    let mut rows = Vec::new();
    let mut current: Option<String> = None;
    let mut spills = (0, 0);
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
        } else if line.contains("spill stores") {
            let nums: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            // "N bytes stack frame, S bytes spill stores, L bytes spill loads"
            if nums.len() >= 3 {
                spills = (nums[1], nums[2]);
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs = rest
                .split_whitespace()
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or(0);
            if let Some(k) = current.take() {
                rows.push((k, regs, spills.0, spills.1));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_and_hot_kernels_do_not_spill() {
    if !nvrtc_present() {
        return;
    }
    let ptxas = ptxas();
    if ptxas.is_none() {
        unavailable("ptxas not found (set ANVIL_PTXAS)");
    }
    for (virt, sm) in ARCHS {
        let ptx = compile::compile(virt).unwrap_or_else(|e| panic!("{e}"));
        for k in compile::kernel_names() {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{virt}: kernel {k} is missing from the PTX"
            );
        }
        let Some(ptxas) = &ptxas else { continue };
        let rows = ptxas_report(ptxas, &ptx, sm);
        assert_eq!(
            rows.len(),
            compile::kernel_names().len(),
            "{sm}: ptxas reported {} kernels",
            rows.len()
        );
        println!("{sm}: kernel, registers, spill stores, spill loads (bytes)");
        for (k, regs, st, ld) in &rows {
            let hot = HOT.contains(&k.as_str());
            println!(
                "  {k:<28} {regs:>4} {st:>6} {ld:>6}{}",
                if hot { "  (hot)" } else { "" }
            );
            if hot {
                assert!(
                    *st == 0 && *ld == 0,
                    "{sm}: hot kernel {k} spills ({st} bytes stored, {ld} loaded)"
                );
            }
        }
    }
}
