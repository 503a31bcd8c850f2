//! A bf16 GEMM for `Precision::Bf16Mixed` on x86-64: `c[m,n] (+)= op(a)[m,k] · op(b)[k,n]` with
//! f32 `a`, `b`, `c`. The operands are rounded to bf16 (round-to-nearest-even, the rounding of
//! [`crate::precision::round_bf16`]) while they are packed, the products are summed in f32, so
//! the result equals the emulated path (bf16-rounded f32 operands through faer) up to the order
//! of the f32 summation.
//!
//! Two microkernels, chosen at run time ([`path`]):
//! - **AMX** (`amx_tile` + `amx_bf16`, and on Linux the kernel's permission to use the tile data,
//!   requested once with `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`): a 32x32 block
//!   of C in four 16x16 f32 tiles, `tdpbf16ps` over 32-deep slices of k. Written with `asm!`
//!   because the AMX intrinsics are not stable in Rust 1.95.
//! - **AVX512_BF16**: `vdpbf16ps` (`_mm512_dpbf16_ps`), 8 rows x 32 columns per step.
//!
//! Both read the same packing: A as bf16 rows (k contiguous, padded with zeros to a multiple of
//! 32 rows and 32 columns), B in panels of 32 columns where each k pair is interleaved ("VNNI":
//! `(b[2q][j], b[2q+1][j])` side by side), k padded to a multiple of 32. Zero padding adds
//! nothing to the sums, so edge tiles need no special microkernel; only the final store into C
//! is clipped.
//!
//! Both instructions treat bf16 subnormal inputs (|x| < 1.2e-38) as zero and flush subnormal
//! results; training values never live there.
//!
//! Work is split over rayon as independent 32-row x [`NC`]-column blocks of C, each computed by
//! exactly one task over the whole of k in a fixed order: the result does not depend on the
//! number of threads.

use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows of C per block (two AMX tiles high).
const MR: usize = 32;
/// Columns per packed B panel (two AMX tiles wide, two zmm registers).
const NR: usize = 32;
/// Depth of one AMX step (32 bf16 = 64 bytes per tile row); k is padded to it.
const KB: usize = 32;
/// Columns of C per task: a 32-row A block is reused over this many columns of B.
const NC: usize = 256;

/// Which bf16 microkernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 BF16 (`vdpbf16ps`).
    Avx512,
}

impl Bf16Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Avx512 => "avx512_bf16",
        }
    }
}

/// Whether the AVX512_BF16 microkernel can run here.
pub fn avx512_bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AMX microkernel can run here: the CPU has `amx_tile` and `amx_bf16`, the OS
/// saves the tile state (XCR0 bits 17, 18), and (Linux) the process was granted the tile data.
/// The permission request is made once per process.
pub fn amx_supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(amx_detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    let leaf0 = __cpuid_count(0, 0);
    if leaf0.eax < 7 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    let amx_bf16 = l7.edx & (1 << 22) != 0;
    let amx_tile = l7.edx & (1 << 24) != 0;
    let l1 = __cpuid_count(1, 0);
    let osxsave = l1.ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        _xgetbv(0)
    }
    // SAFETY: OSXSAVE is set, so xgetbv is enabled.
    let x = unsafe { xcr0() };
    if x & (0b11 << 17) != (0b11 << 17) {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18).
    let ret: isize;
    // SAFETY: a plain system call with integer arguments; it touches no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158isize => ret,
            in("rdi") 0x1023usize,
            in("rsi") 18usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_detect() -> bool {
    false
}

/// The path [`gemm`] takes on this machine: AMX where supported, else AVX512_BF16, else `None`
/// (the caller keeps the emulated path). `ANVIL_BF16_GEMM=amx|avx512|off` narrows the choice
/// (for benchmarks; a path the CPU lacks is never chosen).
pub fn path() -> Option<Bf16Path> {
    static P: OnceLock<Option<Bf16Path>> = OnceLock::new();
    *P.get_or_init(|| {
        let want = std::env::var("ANVIL_BF16_GEMM").unwrap_or_default();
        let (amx_ok, avx_ok) = match want.as_str() {
            "off" | "emulated" => (false, false),
            "avx512" | "avx512_bf16" => (false, true),
            "amx" => (true, false),
            _ => (true, true),
        };
        if amx_ok && amx_supported() {
            Some(Bf16Path::Amx)
        } else if avx_ok && avx512_bf16_supported() {
            Some(Bf16Path::Avx512)
        } else {
            None
        }
    })
}

/// f32 -> bf16 bits with round-to-nearest-even, NaN kept NaN: the bits of
/// [`crate::precision::round_bf16`]'s result, branch-free so packing loops vectorize.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1));
    let q = (b | 0x0040_0000) >> 16;
    (if nan { q } else { r >> 16 }) as u16
}

/// Widens bf16 bits back to f32.
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Packed A: rows `mp` (multiple of MR) x `kp` (multiple of KB) bf16, row-major.
struct PackedA {
    data: Vec<u16>,
    kp: usize,
}

/// Packed B: `np / NR` panels, each `kp / 2` pairs x NR columns x 2.
struct PackedB {
    data: Vec<u16>,
    kp: usize,
}

fn pack_a(a: &[f32], lda: usize, ta: bool, m: usize, k: usize, parallel: bool) -> PackedA {
    let kp = k.div_ceil(KB) * KB;
    let mp = m.div_ceil(MR) * MR;
    let mut data = vec![0u16; mp * kp];
    let block = |(rb, out): (usize, &mut [u16])| {
        let r0 = rb * MR;
        let rows = MR.min(m.saturating_sub(r0));
        if !ta {
            for i in 0..rows {
                let src = &a[(r0 + i) * lda..(r0 + i) * lda + k];
                for (d, &s) in out[i * kp..i * kp + k].iter_mut().zip(src) {
                    *d = bf16_bits(s);
                }
            }
        } else {
            // op(a)[i][kk] = a[kk*lda + i]: read 32 contiguous values per kk.
            for kk in 0..k {
                let src = &a[kk * lda + r0..kk * lda + r0 + rows];
                for (i, &s) in src.iter().enumerate() {
                    out[i * kp + kk] = bf16_bits(s);
                }
            }
        }
    };
    if parallel {
        data.par_chunks_mut(MR * kp).enumerate().for_each(block);
    } else {
        data.chunks_mut(MR * kp).enumerate().for_each(block);
    }
    PackedA { data, kp }
}

fn pack_b(b: &[f32], ldb: usize, tb: bool, k: usize, n: usize, parallel: bool) -> PackedB {
    let kp = k.div_ceil(KB) * KB;
    let np = n.div_ceil(NR) * NR;
    let mut data = vec![0u16; np * kp];
    let panel = |(p, out): (usize, &mut [u16])| {
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        if !tb {
            // op(b)[kk][j] = b[kk*ldb + j]: two rows at a time, interleaved.
            for q in 0..k.div_ceil(2) {
                let dst = &mut out[q * 2 * NR..(q + 1) * 2 * NR];
                let r0 = &b[2 * q * ldb + c0..2 * q * ldb + c0 + cols];
                for (j, &s) in r0.iter().enumerate() {
                    dst[2 * j] = bf16_bits(s);
                }
                if 2 * q + 1 < k {
                    let r1 = &b[(2 * q + 1) * ldb + c0..(2 * q + 1) * ldb + c0 + cols];
                    for (j, &s) in r1.iter().enumerate() {
                        dst[2 * j + 1] = bf16_bits(s);
                    }
                }
            }
        } else {
            // op(b)[kk][j] = b[j*ldb + kk]: each column is a contiguous run of b.
            for j in 0..cols {
                let src = &b[(c0 + j) * ldb..(c0 + j) * ldb + k];
                for (kk, &s) in src.iter().enumerate() {
                    out[(kk / 2) * 2 * NR + 2 * j + (kk & 1)] = bf16_bits(s);
                }
            }
        }
    };
    if parallel {
        data.par_chunks_mut(NR * kp).enumerate().for_each(panel);
    } else {
        data.chunks_mut(NR * kp).enumerate().for_each(panel);
    }
    PackedB { data, kp }
}

/// Adds (or writes) a 32x32 f32 tile into C, clipped to `rows` x `cols`.
#[inline(always)]
fn store_tile(
    c: &mut [f32],
    ldc: usize,
    tile: &[f32; MR * NR],
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    for i in 0..rows {
        let dst = &mut c[i * ldc..i * ldc + cols];
        let src = &tile[i * NR..i * NR + cols];
        if accumulate {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += *s;
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
}

/// `c[m,n] (+)= op(a)·op(b)` with bf16-rounded operands and f32 accumulation, on `path`.
/// Row-major; `lda`, `ldb`, `ldc` are the row strides of the stored matrices (`a` is stored
/// `[k, m]` when `ta`, `b` is stored `[n, k]` when `tb`). `parallel` splits over rayon.
///
/// # Panics
/// If `path` is not supported by this CPU (check [`path`], [`amx_supported`] or
/// [`avx512_bf16_supported`] first).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    path: Bf16Path,
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    ta: bool,
    b: &[f32],
    ldb: usize,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallel: bool,
) {
    let ok = match path {
        Bf16Path::Amx => amx_supported(),
        Bf16Path::Avx512 => avx512_bf16_supported(),
    };
    assert!(ok, "bf16 GEMM path {} not supported here", path.name());
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "c too short");
    assert!(
        k == 0
            || if ta {
                a.len() >= (k - 1) * lda + m
            } else {
                a.len() >= (m - 1) * lda + k
            },
        "a too short"
    );
    assert!(
        k == 0
            || if tb {
                b.len() >= (n - 1) * ldb + k
            } else {
                b.len() >= (k - 1) * ldb + n
            },
        "b too short"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let pa = pack_a(a, lda, ta, m, k, parallel);
    let pb = pack_b(b, ldb, tb, k, n, parallel);
    let kp = pa.kp;
    debug_assert_eq!(kp, pb.kp);
    let row_blocks = m.div_ceil(MR);
    let col_blocks = n.div_ceil(NC);

    // One task: rows [rb*MR, +MR) x columns [cb*NC, +NC) of C. Tasks are ordered column block
    // first so that neighbouring tasks (one thread's contiguous range) share the B block.
    let c_ptr = SendPtr(c.as_mut_ptr());
    let c_len = c.len();
    let task = |t: usize| {
        let (cb, rb) = (t / row_blocks, t % row_blocks);
        let r0 = rb * MR;
        let rows = MR.min(m - r0);
        let a_blk = &pa.data[r0 * kp..(r0 + MR) * kp];
        let mut tile = [0f32; MR * NR];
        let p_end = (cb * NC + NC).min(n).div_ceil(NR);
        let _amx = (path == Bf16Path::Amx).then(AmxGuard::new);
        for p in (cb * NC / NR)..p_end {
            let c0 = p * NR;
            let cols = NR.min(n - c0);
            let b_pan = &pb.data[p * NR * kp..(p + 1) * NR * kp];
            match path {
                // SAFETY: support checked above; the blocks hold MR x kp and kp x NR values.
                Bf16Path::Amx => unsafe { amx_kernel(a_blk, b_pan, kp, &mut tile) },
                Bf16Path::Avx512 => unsafe { avx512_kernel(a_blk, b_pan, kp, rows, &mut tile) },
            }
            // SAFETY: tasks write disjoint (row block, column range) rectangles of C, and the
            // rectangle lies inside c (checked above).
            let c = unsafe { std::slice::from_raw_parts_mut(c_ptr.get(), c_len) };
            store_tile(&mut c[r0 * ldc + c0..], ldc, &tile, rows, cols, accumulate);
        }
    };
    let tasks = row_blocks * col_blocks;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint parts of one slice to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// AVX512_BF16

/// 32 rows of A (`a`: 32 x kp bf16) times one B panel (kp/2 pairs x 32 columns x 2) into
/// `tile` (32 x 32 f32, overwritten); rows past `rows` are left unwritten (zero-padded
/// anyway).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn avx512_kernel(a: &[u16], b: &[u16], kp: usize, rows: usize, tile: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= MR * kp && b.len() >= NR * kp);
    const R: usize = 8;
    let pairs = kp / 2;
    for r0 in (0..rows).step_by(R) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let ap = a.as_ptr().add(r0 * kp) as *const u32;
        let bp = b.as_ptr() as *const __m512i;
        for q in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(2 * q)));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(2 * q + 1)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                    ap.add(r * (kp / 2) + q).read_unaligned() as i32,
                ));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let t = tile.as_mut_ptr().add((r0 + r) * NR);
            _mm512_storeu_ps(t, acc[0]);
            _mm512_storeu_ps(t.add(16), acc[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512_kernel(_: &[u16], _: &[u16], _: usize, _: usize, _: &mut [f32; MR * NR]) {
    unreachable!("no AVX512_BF16 off x86-64")
}

// ---------------------------------------------------------------------------------------------
// AMX

/// The tile configuration (palette 1): tmm0-3 hold C (16 rows x 16 f32), tmm4-5 A (16 rows x
/// 32 bf16), tmm6-7 B (16 k pairs x 16 columns x 2 bf16): every tile is 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
            c[48 + t] = 16; // rows
        }
        Self(c)
    }
}

/// Loads the tile configuration on this thread for the guard's lifetime; `tilerelease` on drop
/// so the OS need not save the tile data of an idle thread.
struct AmxGuard;

impl AmxGuard {
    fn new() -> Self {
        let cfg = TileConfig::new();
        // SAFETY: AMX support (and the OS permission) was checked by the caller.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        }
        let _ = cfg;
        AmxGuard
    }
}

impl Drop for AmxGuard {
    fn drop(&mut self) {
        // SAFETY: only built after ldtilecfg succeeded on this thread.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// 32 rows of A times one B panel into `tile` (overwritten), as four 16x16 C tiles.
/// Needs the tile configuration of [`AmxGuard`] loaded on this thread.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_kernel(a: &[u16], b: &[u16], kp: usize, tile: &mut [f32; MR * NR]) {
    use std::arch::asm;
    debug_assert!(a.len() >= MR * kp && b.len() >= NR * kp);
    let sa = kp * 2; // bytes per A row
    let sb = NR * 4; // bytes per B pair row (32 columns x 2 bf16)
    let a0 = a.as_ptr();
    let a1 = a.as_ptr().add(16 * kp);
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for s in 0..kp / KB {
        let pa0 = a0.add(s * KB);
        let pa1 = a1.add(s * KB);
        let pb0 = b.as_ptr().add(s * (KB / 2) * NR * 2);
        let pb1 = pb0.add(32);
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) pa0,
            a1 = in(reg) pa1,
            b0 = in(reg) pb0,
            b1 = in(reg) pb1,
            sa = in(reg) sa,
            sb = in(reg) sb,
            options(nostack, readonly)
        );
    }
    let t = tile.as_mut_ptr();
    asm!(
        "tilestored [{t0} + {sc}*1], tmm0",
        "tilestored [{t1} + {sc}*1], tmm1",
        "tilestored [{t2} + {sc}*1], tmm2",
        "tilestored [{t3} + {sc}*1], tmm3",
        t0 = in(reg) t,
        t1 = in(reg) t.add(16),
        t2 = in(reg) t.add(16 * NR),
        t3 = in(reg) t.add(16 * NR + 16),
        sc = in(reg) NR * 4,
        options(nostack)
    );
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn amx_kernel(_: &[u16], _: &[u16], _: usize, _: &mut [f32; MR * NR]) {
    unreachable!("no AMX off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::round_bf16;
    use std::io::Write;

    /// A loud line on the real stderr (not captured by the test harness).
    fn skipped(what: &str, why: &str) {
        let _ = writeln!(std::io::stderr(), "SKIPPED: {what} (CPU lacks {why})");
    }

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks `gemm(path)` against an f64 product of the bf16-rounded operands, for all four
    /// transpose combinations, accumulate on/off, sequential and parallel, with padded strides
    /// on some shapes. Bound: recursive f32 summation error, (k + 4)·2⁻²⁴·(Σ|a·b| + |c₀|).
    fn check_path(path: Bf16Path) {
        let shapes = [
            (1, 1, 1),
            (1, 7, 3),
            (17, 33, 65),
            (31, 1, 64),
            (33, 70, 31),
            (64, 32, 32),
            (128, 512, 256),
            (100, 300, 1000),
        ];
        let mut checked = 0usize;
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for pad in [0usize, 3] {
                    let lda = if ta { m } else { k } + pad;
                    let ldb = if tb { k } else { n } + pad;
                    let ldc = n + pad;
                    let a = lcg(m as u64 * 31 + k as u64, if ta { k } else { m } * lda);
                    let b = lcg(n as u64 * 17 + 5, if tb { n } else { k } * ldb);
                    let c0 = lcg(7 + m as u64, m * ldc);
                    let opa = |i: usize, kk: usize| {
                        round_bf16(if ta { a[kk * lda + i] } else { a[i * lda + kk] }) as f64
                    };
                    let opb = |kk: usize, j: usize| {
                        round_bf16(if tb { b[j * ldb + kk] } else { b[kk * ldb + j] }) as f64
                    };
                    let mut want = vec![0f64; m * n];
                    let mut mag = vec![0f64; m * n];
                    for i in 0..m {
                        for kk in 0..k {
                            let x = opa(i, kk);
                            for j in 0..n {
                                let p = x * opb(kk, j);
                                want[i * n + j] += p;
                                mag[i * n + j] += p.abs();
                            }
                        }
                    }
                    for accumulate in [false, true] {
                        let mut outs = Vec::new();
                        for parallel in [false, true] {
                            let mut c = c0.clone();
                            gemm(
                                path, &mut c, ldc, &a, lda, ta, &b, ldb, tb, m, n, k, accumulate,
                                parallel,
                            );
                            for i in 0..m {
                                for j in 0..n {
                                    let base = if accumulate {
                                        c0[i * ldc + j] as f64
                                    } else {
                                        0.0
                                    };
                                    let w = want[i * n + j] + base;
                                    let tol = (k as f64 + 4.0)
                                        * f64::powi(2.0, -24)
                                        * (mag[i * n + j] + base.abs());
                                    let got = c[i * ldc + j] as f64;
                                    assert!(
                                        (got - w).abs() <= tol,
                                        "{} m{m} n{n} k{k} ta{ta} tb{tb} pad{pad} acc{accumulate} \
                                         par{parallel} at ({i},{j}): got {got}, want {w}, tol {tol}",
                                        path.name()
                                    );
                                }
                                // Padding between rows of C is untouched.
                                for j in n..ldc {
                                    if i * ldc + j < c.len() {
                                        assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                                    }
                                }
                            }
                            outs.push(c);
                            checked += 1;
                        }
                        // Same bits sequential and parallel: one task per block of C.
                        assert_eq!(outs[0], outs[1], "{} seq/par differ", path.name());
                    }
                }
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "bf16 GEMM {}: {checked} products checked against the f64 reference",
            path.name()
        );
    }

    #[test]
    fn bf16_gemm_amx_matches_f64_reference() {
        if !amx_supported() {
            skipped(
                "bf16 GEMM amx",
                "amx_tile/amx_bf16 or the OS tile permission",
            );
            return;
        }
        check_path(Bf16Path::Amx);
    }

    #[test]
    fn bf16_gemm_avx512_matches_f64_reference() {
        if !avx512_bf16_supported() {
            skipped("bf16 GEMM avx512_bf16", "avx512_bf16");
            return;
        }
        check_path(Bf16Path::Avx512);
    }

    #[test]
    fn bf16_gemm_k0_writes_zeros_or_keeps_c() {
        let Some(path) = path() else {
            skipped("bf16 GEMM k=0", "avx512_bf16 and amx_bf16");
            return;
        };
        let mut c = vec![1f32; 6];
        gemm(
            path,
            &mut c,
            3,
            &[],
            0,
            false,
            &[],
            3,
            false,
            2,
            3,
            0,
            true,
            false,
        );
        assert_eq!(c, vec![1.0; 6]);
        gemm(
            path,
            &mut c,
            3,
            &[],
            0,
            false,
            &[],
            3,
            false,
            2,
            3,
            0,
            false,
            false,
        );
        assert_eq!(c, vec![0.0; 6]);
    }

    #[test]
    fn bf16_bits_is_round_bf16() {
        let mut b: u32 = 1;
        while b < u32::MAX / 7 * 7 {
            let x = f32::from_bits(b);
            let got = bf16_to_f32(bf16_bits(x));
            if x.is_nan() {
                assert!(got.is_nan(), "{b:#x}");
            } else {
                assert_eq!(got.to_bits(), round_bf16(x).to_bits(), "{b:#x}");
            }
            b = b.wrapping_add(7_919_993);
        }
        for x in [f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -0.0, 0.0, 1.0] {
            assert_eq!(bf16_to_f32(bf16_bits(x)).to_bits(), round_bf16(x).to_bits());
        }
        assert!(bf16_to_f32(bf16_bits(f32::from_bits(0x7F80_0001))).is_nan());
    }

    /// `ops::matmul` in bf16-mixed f32 (which takes the bf16 GEMM here) agrees with the
    /// emulated path (bf16-rounded f32 operands through faer) within f32 summation error.
    #[test]
    fn matmul_bf16_mixed_matches_emulation() {
        use crate::precision::{rounded, Precision};
        use crate::Float;
        match path() {
            Some(p) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "ops::matmul bf16-mixed takes {}",
                    p.name()
                );
            }
            None => skipped("ops::matmul bf16 GEMM dispatch", "avx512_bf16 and amx_bf16"),
        }
        let (m, n, k) = (300, 200, 500);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = lcg(1, m * k);
            let b = lcg(2, k * n);
            let mut c = vec![0f32; m * n];
            crate::ops::matmul(Precision::Bf16Mixed, &mut c, &a, ta, &b, tb, m, n, k, false);
            let (ar, br) = (
                rounded(Precision::Bf16Mixed, &a),
                rounded(Precision::Bf16Mixed, &b),
            );
            let mut e = vec![0f32; m * n];
            let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
            f32::gemm(&mut e, n, &ar, lda, ta, &br, ldb, tb, m, n, k, false, false);
            for (x, y) in c.iter().zip(&e) {
                assert!((x - y).abs() <= 2e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}
