//! The kernel sources (`kernels/cuda/*.cu`, embedded in the binary) and their compilation with
//! NVRTC for one GPU architecture, cached on disk so a worker compiles once per machine.

use std::path::PathBuf;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::CudaError;

/// Every source file, in the order they are concatenated into one translation unit.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../cuda/common.cuh")),
    (
        "elementwise.cu",
        include_str!("../../../cuda/elementwise.cu"),
    ),
    ("norm.cu", include_str!("../../../cuda/norm.cu")),
    ("rows.cu", include_str!("../../../cuda/rows.cu")),
    ("loss.cu", include_str!("../../../cuda/loss.cu")),
    ("attention.cu", include_str!("../../../cuda/attention.cu")),
    ("conv.cu", include_str!("../../../cuda/conv.cu")),
];

/// Head dims the attention kernels are instantiated for (`attn_*_<D>` handles dh ≤ D).
pub const ATTENTION_DIMS: &[usize] = &[32, 64, 128];

/// Every kernel entry point the backend loads.
pub fn kernel_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "bias_fill_rows",
        "bias_backward",
        "relu_forward",
        "relu_backward",
        "gelu_forward",
        "gelu_backward",
        "dropout",
        "residual_forward",
        "add_inplace",
        "fill",
        "scale",
        "round_to",
        "cast_to_half",
        "bf16_to_f32",
        "adam_segment",
        "sumsq_partials",
        "layernorm_forward",
        "layernorm_backward_dx",
        "layernorm_backward_params",
        "embedding_forward",
        "embedding_backward",
        "token_embedding_forward",
        "token_embedding_backward",
        "value_projection_backward",
        "gather_rows",
        "scatter_rows",
        "mean_rows",
        "cross_entropy",
        "squared_error",
        "attn_backward_delta",
        "conv_im2col",
        "conv_col2im",
        "bias_fill_planes",
        "maxpool_forward",
        "maxpool_backward",
        "upsample_bilinear_forward",
        "upsample_bilinear_backward",
        "concat_channels",
        "split_channels",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for d in ATTENTION_DIMS {
        for k in ["attn_forward", "attn_backward_dq", "attn_backward_dkdv"] {
            names.push(format!("{k}_{d}"));
        }
    }
    names
}

/// The whole program: the sources with a `#line` marker before each, so NVRTC's messages name
/// the file and line.
pub fn program() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s.push_str(&format!("#line 1 \"{name}\"\n{text}\n"));
    }
    s
}

/// Whether libnvrtc can be loaded (from the CUDA toolkit or the PyPI wheel, on the library path).
pub fn nvrtc_available() -> bool {
    // SAFETY: only probes whether the library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles [`program`] to PTX for virtual architecture `arch` (e.g. "compute_90").
pub fn compile(arch: &str) -> Result<String, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(program(), opts).map_err(|e| CudaError::Compile {
        arch: arch.to_string(),
        log: format!("{e:?}"),
    })?;
    Ok(ptx.to_src())
}

/// [`compile`], reusing `$ANVIL_CACHE_DIR` (default `$XDG_CACHE_HOME/anvil` or
/// `~/.cache/anvil`)/ptx/<hash>-<arch>.ptx when the sources have not changed.
pub fn compile_cached(arch: &str) -> Result<String, CudaError> {
    let key = format!("{:016x}-{arch}.ptx", fnv1a(program().as_bytes()));
    let path = cache_dir().map(|d| d.join("ptx").join(key));
    if let Some(p) = &path {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            return Ok(ptx);
        }
    }
    let ptx = compile(arch)?;
    if let Some(p) = &path {
        // A cache that cannot be written only costs a recompile next time.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok(ptx)
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ANVIL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("anvil"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("anvil"))
}

/// 64-bit FNV-1a: a stable content hash for the cache key (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
