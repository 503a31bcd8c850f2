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
//! Both read the same packing: A as bf16 rows (k contiguous, zero-padded to a multiple of 32
//! rows and 32 columns), B in panels of 32 columns where each k pair is interleaved ("VNNI":
//! `(b[2q][j], b[2q+1][j])` in one 32-bit word), k padded to a multiple of 32. Zero padding adds
//! nothing to the sums, so edge blocks need no special microkernel; they go through a 32x32
//! buffer and only the copy into C is clipped. Packing converts with AVX512_BF16's
//! `vcvtne2ps2bf16` (round-to-nearest-even, the bits of [`crate::precision::round_bf16`]
//! except that subnormals become zero, as the microkernels treat them anyway), or where that
//! is missing with AVX-512 integer code giving exactly those bits (both tested on a sweep of
//! patterns).
//!
//! Blocking: k in chunks of [`KC`]; per chunk, B is packed once (all panels, in parallel), then
//! each task packs a group of up to [`G`] 32-row blocks of A into a thread-local buffer and
//! runs the microkernel over its panels, each panel used by the group's row blocks in a row.
//! Full 32x32 blocks of C are loaded into / stored from the accumulators directly.
//!
//! Both instructions treat bf16 subnormal inputs (|x| < 1.2e-38) as zero and flush subnormal
//! results; training values never live there.
//!
//! Every block of C is computed by exactly one task, over the k chunks in order, with the same
//! instructions whatever the grouping: the result does not depend on the number of threads
//! (tested: sequential and parallel give the same bits).

use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows of C per block (two AMX tiles high).
const MR: usize = 32;
/// Columns per packed B panel (two AMX tiles wide, two zmm registers).
const NR: usize = 32;
/// Depth of one AMX step (32 bf16 = 64 bytes per tile row); k is padded to it.
const KB: usize = 32;
/// Depth of one chunk of k: B's chunk (n x KC bf16) is packed once and read by every task.
const KC: usize = 1024;
/// Row blocks of A per task (at most): each packed B panel is used by G row blocks in a row.
const G: usize = 4;

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
        std::arch::is_x86_feature_detected!("avx512bf16") && packing_supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The packing routines use AVX-512 F/BW/VL (every CPU with AVX512_BF16 or AMX has them).
fn packing_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AMX microkernel can run here: the CPU has `amx_tile` and `amx_bf16` (and
/// AVX-512 F/BW/VL for the packing), the OS saves the tile state (XCR0 bits 17, 18), and
/// (Linux) the process was granted the tile data. The permission request is made once per
/// process.
pub fn amx_supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| packing_supported() && amx_detect())
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

/// The mask of the first `min(left, 16)` of 16 lanes (a loop's last, partial vector; also
/// the AVX-512 loops of `fastmath`).
#[inline(always)]
pub(crate) fn lanes16(left: usize) -> u16 {
    if left >= 16 {
        0xFFFF
    } else {
        (1u16 << left) - 1
    }
}

/// Rounds 16 f32 lanes to bf16 as [`bf16_bits`] does, result in the high half of each lane
/// (the low half is garbage; callers shift or mask).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round16(x: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), lsb);
    let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
    let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
    let q = _mm512_or_si512(x, _mm512_set1_epi32(0x0040_0000));
    _mm512_mask_blend_epi32(nan, r, q)
}

/// Whether packing converts with the AVX512_BF16 instruction `vcvtne2ps2bf16` (one
/// instruction per 32 values) instead of integer rounding code. Its bits equal [`bf16_bits`]
/// except that a subnormal input becomes a zero of its sign, which changes no product: both
/// microkernels treat bf16 subnormal inputs as zero anyway.
fn hw_convert() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(avx512_bf16_supported)
}

/// The bits packing gives `x`: [`bf16_bits`], with subnormals flushed to a signed zero where
/// [`hw_convert`] applies.
#[cfg(test)]
fn packed_bits(x: f32) -> u16 {
    if hw_convert() && x.is_subnormal() {
        ((x.to_bits() >> 16) & 0x8000) as u16
    } else {
        bf16_bits(x)
    }
}

/// `dst[j] = bf16(src[j])` for `j < src.len()` (bits of [`packed_bits`]).
#[cfg(target_arch = "x86_64")]
unsafe fn cvt_row(dst: &mut [u16], src: &[f32]) {
    if hw_convert() {
        cvt_row_hw(dst, src)
    } else {
        cvt_row_int(dst, src)
    }
}

/// [`cvt_row`] with `vcvtne2ps2bf16`, 32 values per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn cvt_row_hw(dst: &mut [u16], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = src.len();
    debug_assert!(dst.len() >= n);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut j = 0;
    while j + 32 <= n {
        let lo = _mm512_loadu_ps(s.add(j));
        let hi = _mm512_loadu_ps(s.add(j + 16));
        // Words 0..16 from the second operand, 16..32 from the first.
        let h = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(
            d.add(j) as *mut __m512i,
            std::mem::transmute::<__m512bh, __m512i>(h),
        );
        j += 32;
    }
    while j < n {
        let left = n - j;
        let mask = lanes16(left);
        let x = _mm512_maskz_loadu_ps(mask, s.add(j));
        let h = _mm512_cvtneps_pbh(x);
        _mm256_mask_storeu_epi16(
            d.add(j) as *mut i16,
            mask,
            std::mem::transmute::<__m256bh, __m256i>(h),
        );
        j += 16;
    }
}

/// [`cvt_row`] with AVX-512 integer code: exactly [`bf16_bits`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn cvt_row_int(dst: &mut [u16], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = src.len();
    debug_assert!(dst.len() >= n);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut j = 0;
    while j < n {
        let left = n - j;
        let mask = lanes16(left);
        let x = _mm512_maskz_loadu_epi32(mask, s.add(j) as *const i32);
        let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(round16(x)));
        _mm256_mask_storeu_epi16(d.add(j) as *mut i16, mask, h);
        j += 16;
    }
}

/// VNNI pairs: `dst[j] = bf16(r0[j]) | bf16(r1[j]) << 16` (r1 absent: 0 in the high half),
/// bits of [`packed_bits`].
#[cfg(target_arch = "x86_64")]
unsafe fn pair_row(dst: &mut [u32], r0: &[f32], r1: Option<&[f32]>) {
    if hw_convert() {
        pair_row_hw(dst, r0, r1)
    } else {
        pair_row_int(dst, r0, r1)
    }
}

/// [`pair_row`] with `vcvtne2ps2bf16`: both rows' 16 values converted by one instruction,
/// then their words interleaved by one permutation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pair_row_hw(dst: &mut [u32], r0: &[f32], r1: Option<&[f32]>) {
    use std::arch::x86_64::*;
    // Word 2i takes word i (row 0), word 2i + 1 takes word 16 + i (row 1).
    static INTERLEAVE: [u16; 32] = [
        0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12,
        28, 13, 29, 14, 30, 15, 31,
    ];
    let n = r0.len();
    debug_assert!(dst.len() >= n && r1.is_none_or(|r| r.len() >= n));
    let d = dst.as_mut_ptr();
    let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const __m512i);
    let mut j = 0;
    while j < n {
        let left = n - j;
        let mask = lanes16(left);
        let x0 = _mm512_maskz_loadu_ps(mask, r0.as_ptr().add(j));
        let x1 = match r1 {
            Some(r1) => _mm512_maskz_loadu_ps(mask, r1.as_ptr().add(j)),
            None => _mm512_setzero_ps(),
        };
        let h = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(x1, x0));
        let w = _mm512_permutexvar_epi16(idx, h);
        _mm512_mask_storeu_epi32(d.add(j) as *mut i32, mask, w);
        j += 16;
    }
}

/// [`pair_row`] with AVX-512 integer code: exactly [`bf16_bits`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pair_row_int(dst: &mut [u32], r0: &[f32], r1: Option<&[f32]>) {
    use std::arch::x86_64::*;
    let n = r0.len();
    debug_assert!(dst.len() >= n && r1.is_none_or(|r| r.len() >= n));
    let d = dst.as_mut_ptr();
    let hi_mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut j = 0;
    while j < n {
        let left = n - j;
        let mask = lanes16(left);
        let x0 = _mm512_maskz_loadu_epi32(mask, r0.as_ptr().add(j) as *const i32);
        let mut w = _mm512_srli_epi32::<16>(round16(x0));
        if let Some(r1) = r1 {
            let x1 = _mm512_maskz_loadu_epi32(mask, r1.as_ptr().add(j) as *const i32);
            w = _mm512_or_si512(w, _mm512_and_si512(round16(x1), hi_mask));
        }
        _mm512_mask_storeu_epi32(d.add(j) as *mut i32, mask, w);
        j += 16;
    }
}

/// Rounds `xs` to bf16 values in place (f32 storage), with AVX-512: the bits of
/// [`crate::precision::round_bf16`]. Returns false (and leaves `xs` alone) where the CPU lacks
/// AVX-512 F/BW/VL; the caller then rounds with the scalar code.
pub fn round_bf16_slice(xs: &mut [f32]) -> bool {
    if !packing_supported() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn go(xs: &mut [f32]) {
            use std::arch::x86_64::*;
            let n = xs.len();
            let p = xs.as_mut_ptr() as *mut i32;
            let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
            let mut j = 0;
            while j < n {
                let left = n - j;
                let mask = lanes16(left);
                let x = _mm512_maskz_loadu_epi32(mask, p.add(j));
                _mm512_mask_storeu_epi32(p.add(j), mask, _mm512_and_si512(round16(x), hi));
                j += 16;
            }
        }
        // SAFETY: AVX-512 F/BW/VL checked above.
        unsafe { go(xs) };
    }
    true
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn cvt_row(_: &mut [u16], _: &[f32]) {
    unreachable!()
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pair_row(_: &mut [u32], _: &[f32], _: Option<&[f32]>) {
    unreachable!()
}

fn as_u32(x: &mut [u16]) -> &mut [u32] {
    assert!((x.as_ptr() as usize).is_multiple_of(4) && x.len().is_multiple_of(2));
    // SAFETY: aligned (checked), even length, and every bit pattern is a valid u32.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u32, x.len() / 2) }
}

/// Packs rows `r0..r0+rows` (of op(a)) and columns `k0..k0+kc` of op(a) as bf16 rows of
/// `kcp` values into `out`, zeroing the padding (columns past `kc`, rows past `rows`): `out`
/// holds whatever the previous product left there.
#[allow(clippy::too_many_arguments)]
fn pack_a_rows(
    out: &mut [u16],
    a: &[f32],
    lda: usize,
    ta: bool,
    r0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    kcp: usize,
) {
    out[rows * kcp..].fill(0);
    if !ta {
        for i in 0..rows {
            let s = (r0 + i) * lda + k0;
            // SAFETY: the paths that reach here were checked for AVX-512 F/BW/VL.
            unsafe { cvt_row(&mut out[i * kcp..i * kcp + kc], &a[s..s + kc]) };
            out[i * kcp + kc..(i + 1) * kcp].fill(0);
        }
        return;
    }
    // The transposing path below writes every pair of rows 0..rows (0 past `kc`).
    // op(a)[i][kk] = a[kk*lda + i]: VNNI pairs over i from two rows of a (contiguous), then a
    // 32-bit transpose of 16 pairs at a time into the rows.
    let out = as_u32(out);
    let (half, pairs) = (kcp / 2, kc.div_ceil(2));
    let mut tmp = [0u32; 16 * MR * G];
    for q0 in (0..pairs).step_by(16) {
        let qn = 16.min(pairs - q0);
        for dq in 0..qn {
            let kk = k0 + 2 * (q0 + dq);
            let s0 = kk * lda + r0;
            let r1 = (kk + 1 < k0 + kc).then(|| &a[s0 + lda..s0 + lda + rows]);
            // SAFETY: as above.
            unsafe { pair_row(&mut tmp[dq * rows..(dq + 1) * rows], &a[s0..s0 + rows], r1) };
        }
        // SAFETY: as above; q0 + 16 <= half (half is a multiple of 16), tmp holds qn x rows.
        unsafe { transpose_pairs(out, half, q0, qn, &tmp, rows) };
    }
}

/// `out[i*half + q0 + dq] = tmp[dq*rows + i]` for i < rows, dq < 16 (0 for dq >= qn): one
/// 16-lane gather per row of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs(
    out: &mut [u32],
    half: usize,
    q0: usize,
    qn: usize,
    tmp: &[u32],
    rows: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(q0 + 16 <= half && out.len() >= (rows - 1) * half + q0 + 16);
    debug_assert!(tmp.len() >= qn * rows && rows * 16 < i32::MAX as usize);
    let mask: u16 = if qn >= 16 { 0xFFFF } else { (1u16 << qn) - 1 };
    let step = _mm512_set1_epi32(rows as i32);
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut idx = _mm512_mullo_epi32(lanes, step);
    let one = _mm512_set1_epi32(1);
    for i in 0..rows {
        let v = _mm512_mask_i32gather_epi32::<4>(
            _mm512_setzero_si512(),
            mask,
            idx,
            tmp.as_ptr() as *const i32,
        );
        _mm512_storeu_si512(out.as_mut_ptr().add(i * half + q0) as *mut __m512i, v);
        idx = _mm512_add_epi32(idx, one);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_pairs(_: &mut [u32], _: usize, _: usize, _: usize, _: &[u32], _: usize) {
    unreachable!()
}

/// Packs columns `k0..k0+kc` of op(b) into VNNI panels of NR columns (`kcp / 2` pair rows of
/// NR u32 each) into `out` (already zeroed).
#[allow(clippy::too_many_arguments)]
fn pack_b_panel(
    out: &mut [u16],
    b: &[f32],
    ldb: usize,
    tb: bool,
    c0: usize,
    cols: usize,
    k0: usize,
    kc: usize,
) {
    let out = as_u32(out);
    if !tb {
        // op(b)[kk][j] = b[kk*ldb + j]: two rows at a time.
        for q in 0..kc.div_ceil(2) {
            let s0 = (k0 + 2 * q) * ldb + c0;
            let r1 = (2 * q + 1 < kc).then(|| &b[s0 + ldb..s0 + ldb + cols]);
            // SAFETY: as in pack_a_rows.
            unsafe { pair_row(&mut out[q * NR..q * NR + cols], &b[s0..s0 + cols], r1) };
        }
    } else {
        // op(b)[kk][j] = b[j*ldb + kk]: a row of b is one column's pairs, already adjacent.
        // Each column's run goes to a row of a scratch buffer (kcp values, zero-padded), then
        // 16 columns at a time are transposed into the panel's pair rows by gathers.
        let kcp = out.len() / NR * 2;
        let half = kcp / 2;
        let mut rows = TBUF.with(|s| s.take());
        if rows.len() < cols * kcp {
            rows.resize(cols * kcp, 0);
        }
        for j in 0..cols {
            let s = (c0 + j) * ldb + k0;
            let r = &mut rows[j * kcp..(j + 1) * kcp];
            // SAFETY: as in pack_a_rows.
            unsafe { cvt_row(&mut r[..kc], &b[s..s + kc]) };
            r[kc..].fill(0);
        }
        let rows32 = as_u32(&mut rows[..cols * kcp]);
        for j0 in (0..cols).step_by(16) {
            // SAFETY: as in pack_a_rows; j0 + 16 <= NR, rows32 holds (cols - j0) x half from j0.
            unsafe { transpose_pairs(out, NR, j0, 16.min(cols - j0), &rows32[j0 * half..], half) };
        }
        TBUF.with(|s| s.set(rows));
    }
}

/// Takes a reusable buffer from a thread-local slot (an empty one if the slot is in use
/// further up this thread's stack) of `len` values, keeping what it held: only growth is
/// zero-filled (A's packing zeroes its own padding; zeroing all of it was a pass per product).
fn take_buf_as_is(
    slot: &'static std::thread::LocalKey<std::cell::Cell<Vec<u16>>>,
    len: usize,
) -> Vec<u16> {
    let mut v = slot.with(|s| s.take());
    v.resize(len, 0);
    v
}

/// Takes a reusable buffer from a thread-local slot (an empty one if the slot is in use
/// further up this thread's stack), zero-filled to `len`.
fn take_buf(
    slot: &'static std::thread::LocalKey<std::cell::Cell<Vec<u16>>>,
    len: usize,
) -> Vec<u16> {
    let mut v = slot.with(|s| s.take());
    v.clear();
    v.resize(len, 0);
    v
}

thread_local! {
    static ABUF: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
    static BBUF: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
    static TBUF: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `c[m,n] (+)= op(a)·op(b)` with bf16-rounded operands and f32 accumulation, on `path`.
/// Row-major; `lda`, `ldb`, `ldc` are the row strides of the stored matrices (`a` is stored
/// `[k, m]` when `ta`, `b` is stored `[n, k]` when `tb`). `parallel` splits over rayon.
///
/// k is processed in chunks of [`KC`]: B's chunk is packed once (all panels), then each task
/// packs its group of row blocks of A for the chunk and runs the microkernel over every panel
/// (B panel reused by the group's row blocks). C is loaded into the accumulators for every
/// chunk after the first (or the first too when `accumulate`).
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
    if !check(path, c, ldc, a, lda, ta, m, n, k, accumulate) {
        return;
    }
    check_b(b, ldb, tb, n, k);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let mut bbuf = take_buf(&BBUF, n.div_ceil(NR) * NR * kc.div_ceil(KB) * KB);
        pack_b_chunk(&mut bbuf, b, ldb, tb, n, k0, kc, parallel);
        run_chunk(
            path, c, ldc, a, lda, ta, &bbuf, m, n, k0, kc, accumulate, parallel,
        );
        BBUF.with(|s| s.set(bbuf));
    }
}

/// op(b) `[k, n]` packed once for many products with it ([`gemm_packed`]): the VNNI panels of
/// every chunk of k, as [`gemm`] packs them for one product. Worth it when B is used by many
/// products (attention's K and V, one product per block of queries).
pub struct PackedB {
    n: usize,
    k: usize,
    chunks: Vec<Vec<u16>>,
}

impl PackedB {
    /// Packs op(b) (`b` stored `[n, k]` when `tb`, else `[k, n]`, row stride `ldb`).
    pub fn new(b: &[f32], ldb: usize, tb: bool, n: usize, k: usize, parallel: bool) -> Self {
        assert!(packing_supported(), "bf16 packing needs AVX-512 F/BW/VL");
        if n > 0 && k > 0 {
            check_b(b, ldb, tb, n, k);
        }
        let chunks = (0..k)
            .step_by(KC)
            .map(|k0| {
                let kc = KC.min(k - k0);
                let mut buf = vec![0u16; n.div_ceil(NR) * NR * kc.div_ceil(KB) * KB];
                pack_b_chunk(&mut buf, b, ldb, tb, n, k0, kc, parallel);
                buf
            })
            .collect();
        PackedB { n, k, chunks }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }
}

/// [`gemm`] with B packed beforehand: `c[m, b.n()] (+)= op(a)[m, b.k()] · B`, the same bits.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    path: Bf16Path,
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    ta: bool,
    b: &PackedB,
    m: usize,
    accumulate: bool,
    parallel: bool,
) {
    let (n, k) = (b.n, b.k);
    if !check(path, c, ldc, a, lda, ta, m, n, k, accumulate) {
        return;
    }
    for (ci, buf) in b.chunks.iter().enumerate() {
        let k0 = ci * KC;
        let kc = KC.min(k - k0);
        run_chunk(
            path, c, ldc, a, lda, ta, buf, m, n, k0, kc, accumulate, parallel,
        );
    }
}

/// Checks the path and the shapes of c and a; handles the empty products (false: nothing
/// left to compute).
#[allow(clippy::too_many_arguments)]
fn check(
    path: Bf16Path,
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    ta: bool,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> bool {
    let ok = match path {
        Bf16Path::Amx => amx_supported(),
        Bf16Path::Avx512 => avx512_bf16_supported(),
    };
    assert!(ok, "bf16 GEMM path {} not supported here", path.name());
    if m == 0 || n == 0 {
        return false;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "c too short");
    assert!(ldc >= n, "ldc < n");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return false;
    }
    assert!(
        if ta {
            lda >= m && a.len() >= (k - 1) * lda + m
        } else {
            lda >= k && a.len() >= (m - 1) * lda + k
        },
        "a too short"
    );
    true
}

fn check_b(b: &[f32], ldb: usize, tb: bool, n: usize, k: usize) {
    assert!(
        if tb {
            ldb >= k && b.len() >= (n - 1) * ldb + k
        } else {
            ldb >= n && b.len() >= (k - 1) * ldb + n
        },
        "b too short"
    );
}

/// Packs the chunk `k0..k0 + kc` of op(b) into `out` (zeroed, `panels · NR · kcp` long).
#[allow(clippy::too_many_arguments)]
fn pack_b_chunk(
    out: &mut [u16],
    b: &[f32],
    ldb: usize,
    tb: bool,
    n: usize,
    k0: usize,
    kc: usize,
    parallel: bool,
) {
    let panels = n.div_ceil(NR);
    let kcp = kc.div_ceil(KB) * KB;
    let pack_panel = |(p, o): (usize, &mut [u16])| {
        pack_b_panel(o, b, ldb, tb, p * NR, NR.min(n - p * NR), k0, kc)
    };
    if parallel && panels > 1 {
        out.par_chunks_mut(NR * kcp)
            .enumerate()
            .for_each(pack_panel);
    } else {
        out.chunks_mut(NR * kcp).enumerate().for_each(pack_panel);
    }
}

/// One chunk `k0..k0 + kc` of the product against B's packed chunk `pb`: each task packs its
/// group of row blocks of A and runs the microkernel over its panels. C is loaded into the
/// accumulators unless this is the first chunk of a product that does not accumulate.
#[allow(clippy::too_many_arguments)]
fn run_chunk(
    path: Bf16Path,
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    ta: bool,
    pb: &[u16],
    m: usize,
    n: usize,
    k0: usize,
    kc: usize,
    accumulate: bool,
    parallel: bool,
) {
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let row_blocks = m.div_ceil(MR);
    let panels = n.div_ceil(NR);
    // Row blocks per task: up to G, while leaving at least two tasks per thread.
    let g = (row_blocks / (2 * threads)).clamp(1, G);
    let groups = row_blocks.div_ceil(g);
    // Few row blocks (weight gradients of narrow layers): split the panels too.
    let col_splits = (2 * threads).div_ceil(groups).clamp(1, panels);
    let panels_per = panels.div_ceil(col_splits);
    let tasks = groups * col_splits;
    let c_ptr = SendPtr(c.as_mut_ptr());
    let kcp = kc.div_ceil(KB) * KB;
    let load_c = accumulate || k0 > 0;
    let task = |t: usize| {
        let (gi, cs) = (t / col_splits, t % col_splits);
        let rb0 = gi * g;
        let nrb = g.min(row_blocks - rb0);
        let r0 = rb0 * MR;
        let rows = (nrb * MR).min(m - r0);
        let mut abuf = take_buf_as_is(&ABUF, nrb * MR * kcp);
        pack_a_rows(&mut abuf, a, lda, ta, r0, rows, k0, kc, kcp);
        let _amx = (path == Bf16Path::Amx).then(AmxGuard::new);
        let mut tile = [0f32; MR * NR];
        let p_end = ((cs + 1) * panels_per).min(panels);
        for p in (cs * panels_per)..p_end {
            let c0 = p * NR;
            let cols = NR.min(n - c0);
            let b_pan = &pb[p * NR * kcp..(p + 1) * NR * kcp];
            for rb in 0..nrb {
                let ri = r0 + rb * MR;
                let rrows = MR.min(m - ri);
                let a_blk = &abuf[rb * MR * kcp..(rb + 1) * MR * kcp];
                // SAFETY: tasks own disjoint rectangles of C, inside c (checked by `check`).
                let cp = unsafe { c_ptr.get().add(ri * ldc + c0) };
                if rrows == MR && cols == NR {
                    // SAFETY: support checked; full 32x32 block of C at cp.
                    unsafe { kernel(path, a_blk, b_pan, kcp, cp, ldc, MR, load_c) };
                } else {
                    // Edge block: through a 32x32 buffer.
                    for i in 0..MR {
                        for j in 0..NR {
                            tile[i * NR + j] = if load_c && i < rrows && j < cols {
                                // SAFETY: inside this task's rectangle of C.
                                unsafe { *cp.add(i * ldc + j) }
                            } else {
                                0.0
                            };
                        }
                    }
                    let tp = tile.as_mut_ptr();
                    // SAFETY: as above, on the buffer.
                    unsafe { kernel(path, a_blk, b_pan, kcp, tp, NR, rrows, true) };
                    for i in 0..rrows {
                        for j in 0..cols {
                            // SAFETY: inside this task's rectangle of C.
                            unsafe { *cp.add(i * ldc + j) = tile[i * NR + j] };
                        }
                    }
                }
            }
        }
        ABUF.with(|s| s.set(abuf));
    };
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// One 32x32 block: `c (+)= a_blk · b_pan` over `kcp` (c row stride `ldc` floats; only the
/// first `rows` rows are touched by the AVX-512 kernel, all 32 by AMX).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn kernel(
    path: Bf16Path,
    a: &[u16],
    b: &[u16],
    kcp: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    load_c: bool,
) {
    match path {
        Bf16Path::Amx => amx_kernel(a, b, kcp, c, ldc, load_c),
        Bf16Path::Avx512 => avx512_kernel(a, b, kcp, c, ldc, rows, load_c),
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

/// `c[0..rows][0..32] (+)= a · b`: 32 rows of A (`a`: 32 x kp bf16) times one B panel (kp/2
/// pairs x 32 columns x 2), 8 rows x 32 columns (16 zmm accumulators) at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn avx512_kernel(
    a: &[u16],
    b: &[u16],
    kp: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= MR * kp && b.len() >= NR * kp);
    let pairs = kp / 2;
    let bp = b.as_ptr() as *const __m512i;
    macro_rules! bh {
        ($x:expr) => {
            std::mem::transmute::<__m512i, __m512bh>($x)
        };
    }
    for r0 in (0..rows).step_by(8) {
        let ap = a.as_ptr().add(r0 * kp) as *const i32;
        let cr = c.add(r0 * ldc);
        let ld = |r: usize, h: usize| {
            if load_c {
                _mm512_loadu_ps(cr.add(r * ldc + 16 * h))
            } else {
                _mm512_setzero_ps()
            }
        };
        let (mut c00, mut c01, mut c10, mut c11) = (ld(0, 0), ld(0, 1), ld(1, 0), ld(1, 1));
        let (mut c20, mut c21, mut c30, mut c31) = (ld(2, 0), ld(2, 1), ld(3, 0), ld(3, 1));
        let (mut c40, mut c41, mut c50, mut c51) = (ld(4, 0), ld(4, 1), ld(5, 0), ld(5, 1));
        let (mut c60, mut c61, mut c70, mut c71) = (ld(6, 0), ld(6, 1), ld(7, 0), ld(7, 1));
        for q in 0..pairs {
            let b0 = bh!(_mm512_loadu_si512(bp.add(2 * q)));
            let b1 = bh!(_mm512_loadu_si512(bp.add(2 * q + 1)));
            macro_rules! row {
                ($r:expr, $x0:ident, $x1:ident) => {
                    let av = bh!(_mm512_set1_epi32(*ap.add($r * pairs + q)));
                    $x0 = _mm512_dpbf16_ps($x0, av, b0);
                    $x1 = _mm512_dpbf16_ps($x1, av, b1);
                };
            }
            row!(0, c00, c01);
            row!(1, c10, c11);
            row!(2, c20, c21);
            row!(3, c30, c31);
            row!(4, c40, c41);
            row!(5, c50, c51);
            row!(6, c60, c61);
            row!(7, c70, c71);
        }
        let acc = [
            [c00, c01],
            [c10, c11],
            [c20, c21],
            [c30, c31],
            [c40, c41],
            [c50, c51],
            [c60, c61],
            [c70, c71],
        ];
        for (r, v) in acc.iter().enumerate().take(rows - r0) {
            _mm512_storeu_ps(cr.add(r * ldc), v[0]);
            _mm512_storeu_ps(cr.add(r * ldc + 16), v[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512_kernel(_: &[u16], _: &[u16], _: usize, _: *mut f32, _: usize, _: usize, _: bool) {
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

/// `c[0..32][0..32] (+)= a · b` (c row stride `ldc` floats) as four 16x16 C tiles: 32 rows of
/// A (32 x kp bf16) times one B panel. Needs [`AmxGuard`]'s configuration on this thread.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_kernel(a: &[u16], b: &[u16], kp: usize, c: *mut f32, ldc: usize, load_c: bool) {
    use std::arch::asm;
    debug_assert!(a.len() >= MR * kp && b.len() >= NR * kp);
    let sa = kp * 2; // bytes per A row
    let sb = NR * 4; // bytes per B pair row (32 columns x 2 bf16)
    let sc = ldc * 4; // bytes per C row
    let (c0, c1, c2, c3) = (c, c.add(16), c.add(16 * ldc), c.add(16 * ldc + 16));
    if load_c {
        asm!(
            "tileloadd tmm0, [{c0} + {sc}*1]",
            "tileloadd tmm1, [{c1} + {sc}*1]",
            "tileloadd tmm2, [{c2} + {sc}*1]",
            "tileloadd tmm3, [{c3} + {sc}*1]",
            c0 = in(reg) c0,
            c1 = in(reg) c1,
            c2 = in(reg) c2,
            c3 = in(reg) c3,
            sc = in(reg) sc,
            options(nostack, readonly)
        );
    } else {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }
    let a0 = a.as_ptr();
    let a1 = a.as_ptr().add(16 * kp);
    for s in 0..kp / KB {
        let pb0 = b.as_ptr().add(s * (KB / 2) * NR * 2);
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(s * KB),
            a1 = in(reg) a1.add(s * KB),
            b0 = in(reg) pb0,
            b1 = in(reg) pb0.add(32),
            sa = in(reg) sa,
            sb = in(reg) sb,
            options(nostack, readonly)
        );
    }
    asm!(
        "tilestored [{c0} + {sc}*1], tmm0",
        "tilestored [{c1} + {sc}*1], tmm1",
        "tilestored [{c2} + {sc}*1], tmm2",
        "tilestored [{c3} + {sc}*1], tmm3",
        c0 = in(reg) c0,
        c1 = in(reg) c1,
        c2 = in(reg) c2,
        c3 = in(reg) c3,
        sc = in(reg) sc,
        options(nostack)
    );
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn amx_kernel(_: &[u16], _: &[u16], _: usize, _: *mut f32, _: usize, _: bool) {
    unreachable!("no AMX off x86-64")
}

/// What [`thread_peak_gflops`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peak {
    /// f32 `vfmadd` on zmm registers (the f32 GEMM's instruction).
    F32Fma,
    /// `vdpbf16ps` on zmm registers.
    Avx512Bf16,
    /// `tdpbf16ps` on four C tiles.
    Amx,
}

/// The calling thread's instruction-bound peak, GFLOP/s: `rounds` rounds of 16 independent zmm
/// FMAs / `vdpbf16ps`, or of 4 `tdpbf16ps`, on registers only (no memory traffic). For the
/// "share of peak" of a GEMM; run it on every thread at once (`rayon::broadcast`) and add up
/// for the machine's figure. Panics if the CPU lacks the instruction.
pub fn thread_peak_gflops(what: Peak, rounds: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn fma(n: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); 16];
            let x = _mm512_set1_ps(1e-9);
            for _ in 0..n {
                for v in acc.iter_mut() {
                    *v = _mm512_fmadd_ps(*v, x, x);
                }
            }
            _mm512_reduce_add_ps(
                acc.iter()
                    .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)),
            )
        }
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn dp(n: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); 16];
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3000_3000));
            for _ in 0..n {
                for v in acc.iter_mut() {
                    *v = _mm512_dpbf16_ps(*v, x, x);
                }
            }
            _mm512_reduce_add_ps(
                acc.iter()
                    .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)),
            )
        }
        let t = std::time::Instant::now();
        let flops = match what {
            Peak::F32Fma => {
                assert!(std::arch::is_x86_feature_detected!("avx512f"));
                // SAFETY: checked.
                std::hint::black_box(unsafe { fma(rounds) });
                rounds as f64 * 16.0 * 32.0
            }
            Peak::Avx512Bf16 => {
                assert!(avx512_bf16_supported());
                // SAFETY: checked.
                std::hint::black_box(unsafe { dp(rounds) });
                rounds as f64 * 16.0 * 64.0
            }
            Peak::Amx => {
                assert!(amx_supported());
                let _g = AmxGuard::new();
                // SAFETY: AMX checked, tile configuration loaded by the guard.
                unsafe {
                    std::arch::asm!(
                        "tilezero tmm4",
                        "tilezero tmm5",
                        "tilezero tmm6",
                        "tilezero tmm7",
                        options(nostack, nomem)
                    );
                    for _ in 0..rounds {
                        std::arch::asm!(
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            options(nostack, nomem)
                        );
                    }
                }
                rounds as f64 * 4.0 * 16.0 * 16.0 * 32.0 * 2.0
            }
        };
        flops / t.elapsed().as_secs_f64() / 1e9
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (what, rounds);
        panic!("no peak measurement off x86-64")
    }
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

    /// A product's packing of A reuses the buffer the previous product left (NaN here) and
    /// must zero its padding itself: a product with edge rows and an odd k right after a large
    /// all-NaN one is finite and right, on both paths, transposed A or not.
    #[test]
    fn a_packing_buffer_left_over_does_not_leak() {
        for path in [Bf16Path::Amx, Bf16Path::Avx512] {
            let ok = match path {
                Bf16Path::Amx => amx_supported(),
                Bf16Path::Avx512 => avx512_bf16_supported(),
            };
            if !ok {
                skipped("bf16 GEMM packing reuse", path.name());
                continue;
            }
            for ta in [false, true] {
                let (m, n, k) = (17, 33, 65);
                let (a, b) = (lcg(3, m * k), lcg(4, k * n));
                let small = || {
                    let mut c = vec![0f32; m * n];
                    let lda = if ta { m } else { k };
                    gemm(
                        path, &mut c, n, &a, lda, ta, &b, n, false, m, n, k, false, false,
                    );
                    c
                };
                let want = small();
                // A large product of NaNs leaves its packed A in the thread's buffer.
                let (bm, bk) = (64, 2048);
                let mut big = vec![0f32; bm * 32];
                let b_big = lcg(5, bk * 32);
                let nan_a = vec![f32::NAN; bm * bk];
                gemm(
                    path, &mut big, 32, &nan_a, bk, false, &b_big, 32, false, bm, 32, bk, false,
                    false,
                );
                assert!(big.iter().all(|x| x.is_nan()));
                assert_eq!(small(), want, "{} ta {ta}", path.name());
            }
        }
    }

    /// Checks `gemm(path)` against an f64 product of the bf16-rounded operands, for all four
    /// transpose combinations, accumulate on/off, sequential and parallel, with padded strides;
    /// shapes with edge tiles everywhere, several row-block groups (m = 300) and k over two
    /// chunks with an odd tail (k = 2085). Bound: recursive f32 summation error, (k + 4)·2⁻²⁴·(Σ|a·b| + |c₀|).
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
            (300, 40, 70),
            (40, 50, 2085),
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
                        // And with B packed beforehand.
                        let pb = PackedB::new(&b, ldb, tb, n, k, true);
                        let mut c = c0.clone();
                        gemm_packed(path, &mut c, ldc, &a, lda, ta, &pb, m, accumulate, true);
                        assert_eq!(c, outs[0], "{} packed B differs", path.name());
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

    /// The AVX-512 packing conversions give the bits of `packed_bits` (the integer code those
    /// of `bf16_bits`), and the in-place rounding those of `round_bf16`, on a sweep of patterns
    /// (NaN, inf, subnormal, ties) and on tail lengths 1, 15, 16, 17, 33 (and 32, 64 for the
    /// 32-wide conversion).
    #[test]
    fn vector_packing_matches_scalar_rounding() {
        if !packing_supported() {
            skipped("bf16 vector packing", "avx512f/avx512bw/avx512vl");
            return;
        }
        let mut xs = Vec::new();
        let mut b: u32 = 1;
        while b < u32::MAX / 7 * 7 {
            xs.push(f32::from_bits(b));
            b = b.wrapping_add(7_919_993);
        }
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::MAX,
            -0.0,
            f32::from_bits(0x7F80_0001),
        ]);
        xs.extend([f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000)]);
        for len in [xs.len(), 1, 15, 16, 17, 32, 33, 64] {
            let src = &xs[..len];
            let mut h = vec![0u16; len + 1];
            unsafe { cvt_row(&mut h, src) };
            for (j, &x) in src.iter().enumerate() {
                assert_eq!(h[j], packed_bits(x), "{:#x}", x.to_bits());
            }
            // The integer path is bf16_bits exactly, subnormals included.
            let mut hi = vec![0u16; len + 1];
            unsafe { cvt_row_int(&mut hi, src) };
            for (j, &x) in src.iter().enumerate() {
                assert_eq!(hi[j], bf16_bits(x), "{:#x}", x.to_bits());
            }
            let mut wi = vec![0u32; len];
            unsafe { pair_row_int(&mut wi, src, Some(src)) };
            for (j, &x) in src.iter().enumerate() {
                assert_eq!(wi[j], bf16_bits(x) as u32 * 0x1_0001, "{:#x}", x.to_bits());
            }
            assert_eq!(h[len], 0, "wrote past the end");
            let r1: Vec<f32> = src.iter().rev().copied().collect();
            let mut w = vec![0u32; len + 1];
            unsafe { pair_row(&mut w, src, Some(&r1)) };
            for j in 0..len {
                let want = packed_bits(src[j]) as u32 | (packed_bits(r1[j]) as u32) << 16;
                assert_eq!(w[j], want);
            }
            assert_eq!(w[len], 0, "wrote past the end");
            unsafe { pair_row(&mut w, src, None) };
            for j in 0..len {
                assert_eq!(w[j], packed_bits(src[j]) as u32);
            }
            let mut r = src.to_vec();
            r.push(7.0);
            assert!(round_bf16_slice(&mut r[..len]));
            for j in 0..len {
                if src[j].is_nan() {
                    assert!(r[j].is_nan());
                } else {
                    assert_eq!(
                        r[j].to_bits(),
                        round_bf16(src[j]).to_bits(),
                        "{:#x}",
                        src[j].to_bits()
                    );
                }
            }
            assert_eq!(r[len], 7.0, "wrote past the end");
        }
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
