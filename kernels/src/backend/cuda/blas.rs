//! Matrix products through cuBLASLt: row-major `c[m,n] (+)= op(a)·op(b)` with f32, bf16 or fp16
//! operands and f32 accumulation and output (`CUBLAS_COMPUTE_32F`: exact fp32, no TF32, so
//! fp32 training means what it means on the CPU).

use std::ffi::c_void;

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream};

use super::CudaError;

/// Operand storage of one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operands {
    F32,
    Bf16,
    F16,
}

impl Operands {
    fn data_type(self) -> sys::cudaDataType {
        match self {
            Operands::F32 => sys::cudaDataType_t::CUDA_R_32F,
            Operands::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
            Operands::F16 => sys::cudaDataType_t::CUDA_R_16F,
        }
    }
}

/// What the algorithm choice depends on: operand type, transposes, shape and the pointers'
/// alignments (A', B', C as cuBLASLt sees them).
type AlgoKey = (Operands, bool, bool, usize, usize, usize, [u32; 3]);

/// A cuBLASLt handle, its workspace, and the algorithm chosen for each product seen so far
/// (the heuristic query costs tens of microseconds on the host; a training step repeats the
/// same few dozen shapes).
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    algos: std::sync::Mutex<std::collections::HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>>,
}

/// The alignment cuBLASLt may assume for a device address: its largest power-of-two divisor,
/// at most 256 bytes (the preference's default, which would admit algorithms that cannot read
/// a buffer starting mid-allocation, such as one image of a batch or one parameter tensor).
fn alignment(addr: u64) -> u32 {
    1u32 << addr.trailing_zeros().min(8)
}

// SAFETY: the handle is used from one thread at a time (the backend's calls are issued in
// order on one stream); cuBLASLt handles may move between threads.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

/// cuBLASLt's recommendation: 32 MiB on Hopper, 4 MiB before.
fn workspace_bytes(major: i32) -> usize {
    if major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        unsafe {
            let _ = result::destroy_matrix_layout(self.0);
        }
    }
}
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            let _ = result::destroy_matmul_desc(self.0);
        }
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            let _ = result::destroy_matmul_pref(self.0);
        }
    }
}

fn blas_err(what: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("cuBLASLt {what}: {e:?}"))
}

impl Blas {
    pub fn new(stream: &std::sync::Arc<CudaStream>, major: i32) -> Result<Self, CudaError> {
        let handle = result::create_handle().map_err(|e| blas_err("create handle", e))?;
        // SAFETY: uninitialized bytes are fine for a scratch workspace.
        let workspace = unsafe { stream.alloc::<u8>(workspace_bytes(major)) }
            .map_err(|e| CudaError::Driver(format!("workspace: {e}")))?;
        Ok(Self {
            handle,
            workspace,
            algos: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Row-major `c[m,n] = op(a)·op(b) + beta·c` on raw device pointers. Expressed in
    /// cuBLASLt's column-major terms as cᵀ[n,m] = op(b)ᵀ·op(a)ᵀ: the stored row-major b is
    /// column-major bᵀ, so no data moves.
    ///
    /// # Safety
    /// The pointers must address buffers of at least the sizes the shapes imply, of `ops` type
    /// for `a`/`b` and f32 for `c`, valid on `stream`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        stream: &CudaStream,
        ops: Operands,
        c: u64,
        a: u64,
        ta: bool,
        b: u64,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> Result<(), CudaError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (m64, n64, k64) = (m as u64, n as u64, k as u64);
        let ty = ops.data_type();
        // A' = b (op = tb), B' = a (op = ta), C' = cᵀ [n, m].
        let a_layout = if tb { (k64, n64, k64) } else { (n64, k64, n64) };
        let b_layout = if ta { (m64, k64, m64) } else { (k64, m64, k64) };
        let la = Layout(
            result::create_matrix_layout(ty, a_layout.0, a_layout.1, a_layout.2 as i64)
                .map_err(|e| blas_err("layout", e))?,
        );
        let lb = Layout(
            result::create_matrix_layout(ty, b_layout.0, b_layout.1, b_layout.2 as i64)
                .map_err(|e| blas_err("layout", e))?,
        );
        let lc = Layout(
            result::create_matrix_layout(sys::cudaDataType_t::CUDA_R_32F, n64, m64, n64 as i64)
                .map_err(|e| blas_err("layout", e))?,
        );
        let desc = Desc(
            result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(|e| blas_err("descriptor", e))?,
        );
        for (attr, t) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                tb as i32,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                ta as i32,
            ),
        ] {
            result::set_matmul_desc_attribute(
                desc.0,
                attr,
                (&t) as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .map_err(|e| blas_err("transpose", e))?;
        }
        let ws = self.workspace.len();
        let aligns = [alignment(b), alignment(a), alignment(c)];
        let key = (ops, ta, tb, m, n, k, aligns);
        let cached = self
            .algos
            .lock()
            .expect("algorithm cache")
            .get(&key)
            .copied();
        let algo = match cached {
            Some(algo) => algo,
            None => {
                let algo = self.choose(&desc, &la, &lb, &lc, ws, aligns).map_err(|e| {
                    CudaError::Driver(format!(
                        "cuBLASLt: no algorithm for {m}x{n}x{k} {ops:?}: {e}"
                    ))
                })?;
                self.algos
                    .lock()
                    .expect("algorithm cache")
                    .insert(key, algo);
                algo
            }
        };
        let alpha = 1.0f32;
        let (w, _guard) = cudarc::driver::DevicePtr::device_ptr(&self.workspace, stream);
        result::matmul(
            self.handle,
            desc.0,
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
            b as *const c_void,
            la.0,
            a as *const c_void,
            lb.0,
            c as *const c_void,
            lc.0,
            c as *mut c_void,
            lc.0,
            &algo,
            w as *mut c_void,
            ws,
            stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(|e| blas_err("matmul", e))
    }
}

impl Blas {
    /// cuBLASLt's first choice for these layouts, limited to the workspace and to algorithms
    /// that accept the operands' actual alignments.
    ///
    /// # Safety
    /// The descriptors must be live.
    unsafe fn choose(
        &self,
        desc: &Desc,
        la: &Layout,
        lb: &Layout,
        lc: &Layout,
        ws: usize,
        aligns: [u32; 3],
    ) -> Result<sys::cublasLtMatmulAlgo_t, String> {
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let pref = Pref(result::create_matmul_pref().map_err(|e| format!("preference: {e:?}"))?);
        result::set_matmul_pref_attribute(
            pref.0,
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&ws) as *const usize as *const c_void,
            std::mem::size_of::<usize>(),
        )
        .map_err(|e| format!("preference: {e:?}"))?;
        let [a, b, c] = aligns;
        for (attr, v) in [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c),
        ] {
            result::set_matmul_pref_attribute(
                pref.0,
                attr,
                (&v) as *const u32 as *const c_void,
                std::mem::size_of::<u32>(),
            )
            .map_err(|e| format!("alignment preference: {e:?}"))?;
        }
        result::get_matmul_algo_heuristic(self.handle, desc.0, la.0, lb.0, lc.0, lc.0, pref.0)
            .map(|h| h.algo)
            .map_err(|e| format!("{e:?}"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in new, destroyed once.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}
