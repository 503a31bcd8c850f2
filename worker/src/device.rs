//! Which compute device a worker trains on: `training.num_gpus` as scModelForge reads it
//! (Lightning's devices). Unset means auto-detect: a GPU when this build has CUDA and one is
//! visible, else the CPU. A number asks for GPUs, and a worker that cannot open one fails at
//! start saying what it looked for, instead of training on the CPU unasked.

use configs::sleap::{Accelerator, SleapNnConfig};
use configs::ScModelForgeConfig;

use crate::train::{TrainError, TrainOptions};

/// The device a worker computes on.
pub enum Selected {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(kernels::backend::cuda::Cuda),
}

/// This worker's GPU among the node's: `LOCAL_RANK` (torchrun, Kubernetes), `SLURM_LOCALID`
/// (srun), else the global rank, modulo the visible devices (`CUDA_VISIBLE_DEVICES` applies).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn local_ordinal(opts: &TrainOptions, visible: usize) -> usize {
    let local = ["LOCAL_RANK", "SLURM_LOCALID"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
        .unwrap_or(opts.rank);
    local % visible.max(1)
}

/// What bf16-mixed does on this CPU, said once at start (None for other precisions): the
/// speed of bf16 against fp32 depends on the instructions the processor has.
pub fn cpu_precision_note(prec: kernels::Precision) -> Option<String> {
    use kernels::bf16gemm::Bf16Path;
    if prec != kernels::Precision::Bf16Mixed {
        return None;
    }
    Some(match kernels::bf16gemm::path() {
        Some(Bf16Path::Amx) => {
            "bf16-mixed on the CPU: matrix products on AMX tiles (bf16 operands, fp32 sums)".into()
        }
        Some(Bf16Path::Avx512) => "bf16-mixed on the CPU: matrix products with AVX512_BF16, not AMX (none on this processor, or ANVIL_BF16_GEMM=avx512); \
             its bf16 dot products can be slower than fp32 FMAs (with AMX hidden, the measured processor ran bf16-mixed \
             about 1.3x slower than precision \"32\", BENCHMARKS.md): compare with precision \"32\""
            .into(),
        None => "bf16-mixed on the CPU: no bf16 instructions in use (none on this processor, or ANVIL_BF16_GEMM=off), \
             so operands are rounded to bf16 and multiplied in fp32, which is slower than precision \"32\""
            .into(),
    })
}

pub fn select(cfg: &ScModelForgeConfig, opts: &TrainOptions) -> Result<Selected, TrainError> {
    let asked = cfg.training.num_gpus;
    if cfg!(feature = "cuda") && cfg.finetune.is_some() {
        return match asked {
            None => Ok(Selected::Cpu),
            Some(n) => Err(TrainError::Config(format!(
                "training.num_gpus = {n}: fine-tuning runs on the CPU in this build (the GPU trainer pretrains); remove training.num_gpus"
            ))),
        };
    }
    let what = format!(
        "training.num_gpus = {}",
        asked.map_or("auto".to_string(), |n| n.to_string())
    );
    select_gpu(
        asked.is_some(),
        &what,
        "remove training.num_gpus to train on the CPU",
        opts,
        None,
    )
}

/// The device `track` predicts on, from sleap-nn's `--device`: "auto" (a GPU when this build
/// has CUDA and one is visible, else the CPU), "cpu", "cuda" (the first visible GPU) or
/// "cuda:N". A GPU asked for and not opened is an error saying what was looked for.
pub fn select_for_predict(device: &str) -> Result<Selected, String> {
    let ordinal = match device {
        "cpu" => return Ok(Selected::Cpu),
        "auto" => None,
        "cuda" | "gpu" => Some(0),
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Some(n),
            _ => {
                return Err(format!(
                    "--device {d:?}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""
                ))
            }
        },
    };
    open_for_predict(device, ordinal)
}

#[cfg(feature = "cuda")]
fn open_for_predict(device: &str, ordinal: Option<usize>) -> Result<Selected, String> {
    use kernels::backend::cuda::Cuda;
    match ordinal {
        None if !Cuda::available() => Ok(Selected::Cpu),
        o => Cuda::open(o.unwrap_or(0))
            .map(Selected::Cuda)
            .map_err(|e| format!("--device {device}: {e}")),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_for_predict(device: &str, ordinal: Option<usize>) -> Result<Selected, String> {
    match ordinal {
        None => Ok(Selected::Cpu),
        Some(_) => Err(format!(
            "--device {device}: this worker was built without CUDA support (build it with `cargo build --release --features cuda`), or use --device cpu"
        )),
    }
}

/// The device a pose worker trains on: `trainer_config.trainer_accelerator` as sleap-nn reads
/// it (Lightning's accelerator). "auto" takes a GPU when this build has CUDA and one is visible,
/// else the CPU; "gpu"/"cuda" ask for one and fail at start, saying what was looked for, when
/// none can be opened; "cpu" is the CPU. (MPS is refused by the config check.)
pub fn select_pose(cfg: &SleapNnConfig, opts: &TrainOptions) -> Result<Selected, TrainError> {
    let acc = cfg.trainer_config.trainer_accelerator;
    let asked = matches!(acc, Accelerator::Gpu | Accelerator::Cuda);
    if matches!(acc, Accelerator::Cpu) {
        return Ok(Selected::Cpu);
    }
    let indices = cfg
        .trainer_config
        .trainer_device_indices
        .as_deref()
        .filter(|ix| !ix.is_empty());
    select_gpu(
        asked,
        &format!("trainer_config.trainer_accelerator = {}", acc.as_str()),
        "set it to \"cpu\" or \"auto\"",
        opts,
        indices,
    )
}

/// A GPU when `asked` (by the config field `what`; `instead` says how to train on the CPU),
/// or, unasked, when this build has CUDA and one is visible; else the CPU. `indices`
/// (`trainer_device_indices`): the GPUs of this node to use, worker i taking the i-th.
#[cfg(feature = "cuda")]
fn select_gpu(
    asked: bool,
    what: &str,
    _instead: &str,
    opts: &TrainOptions,
    indices: Option<&[usize]>,
) -> Result<Selected, TrainError> {
    use kernels::backend::cuda::Cuda;
    if !asked && !Cuda::available() {
        return Ok(Selected::Cpu);
    }
    let ordinal = match indices {
        Some(ix) => ix[local_ordinal(opts, ix.len())],
        None => local_ordinal(opts, Cuda::device_count()),
    };
    Cuda::open(ordinal).map(Selected::Cuda).map_err(|e| {
        TrainError::Config(format!(
            "{what} asks for a GPU, but GPU {ordinal} could not be opened: {e}"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn select_gpu(
    asked: bool,
    what: &str,
    instead: &str,
    _opts: &TrainOptions,
    _indices: Option<&[usize]>,
) -> Result<Selected, TrainError> {
    if asked {
        return Err(TrainError::Config(format!(
            "{what} asks for a GPU, but this worker was built without CUDA support (build it with `cargo build --release --features cuda`), or {instead}"
        )));
    }
    Ok(Selected::Cpu)
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn gpus_asked_of_a_cpu_build_are_refused_by_name() {
        let mut cfg = ScModelForgeConfig::default();
        let opts = TrainOptions::default();
        assert!(matches!(select(&cfg, &opts), Ok(Selected::Cpu)));
        cfg.training.num_gpus = Some(2);
        let Err(TrainError::Config(msg)) = select(&cfg, &opts) else {
            panic!("num_gpus = 2 on a CPU build must be refused");
        };
        assert!(msg.contains("training.num_gpus = 2"), "{msg}");
        assert!(msg.contains("--features cuda"), "{msg}");
    }

    #[test]
    fn track_devices_parse_as_sleap_nn_writes_them() {
        assert!(matches!(select_for_predict("cpu"), Ok(Selected::Cpu)));
        assert!(matches!(select_for_predict("auto"), Ok(Selected::Cpu)));
        for gpu in ["cuda", "cuda:1"] {
            let Err(msg) = select_for_predict(gpu) else {
                panic!("{gpu} on a CPU build must be refused");
            };
            assert!(msg.contains("--features cuda"), "{msg}");
        }
        let Err(msg) = select_for_predict("tpu") else {
            panic!("tpu must be refused");
        };
        assert!(msg.contains("\"cuda:N\""), "{msg}");
    }

    #[test]
    fn a_gpu_accelerator_for_a_pose_model_on_a_cpu_build_is_refused_by_name() {
        let mut cfg = SleapNnConfig::default();
        let opts = TrainOptions::default();
        for acc in [Accelerator::Auto, Accelerator::Cpu] {
            cfg.trainer_config.trainer_accelerator = acc;
            assert!(matches!(select_pose(&cfg, &opts), Ok(Selected::Cpu)));
        }
        cfg.trainer_config.trainer_accelerator = Accelerator::Gpu;
        let Err(TrainError::Config(msg)) = select_pose(&cfg, &opts) else {
            panic!("a GPU accelerator on a CPU build must be refused");
        };
        assert!(
            msg.contains("trainer_config.trainer_accelerator = gpu"),
            "{msg}"
        );
        assert!(msg.contains("--features cuda"), "{msg}");
    }
}
