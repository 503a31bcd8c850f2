// Shared by every anvil kernel source: the counter-based dropout stream (bit-identical to
// kernels/src/rng.rs) and round-to-nearest-even to bf16/fp16 kept in f32 (kernels/src/precision.rs).
// NVRTC compiles the sources as one translation unit with this header first.

typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u32 lowbias32(u32 x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}

// RngKey::bits_from: 32 uniform bits for element `index` of the stream.
__device__ __forceinline__ u32 rng_bits(u64 stream, u64 index) {
    u32 k0 = (u32)stream, k1 = (u32)(stream >> 32);
    return lowbias32(lowbias32((u32)index ^ k0) ^ ((u32)(index >> 32) + k1));
}

// Precision codes shared with backend/cuda: 0 = f32 (no rounding), 1 = bf16, 2 = fp16.
__device__ __forceinline__ float round_bf16(float x) {
    u32 b = __float_as_uint(x);
    if (x != x) return __uint_as_float((b | 0x00400000u) & 0xffff0000u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return __uint_as_float(b & 0xffff0000u);
}

// Through the PTX conversions, so no header is needed.
__device__ __forceinline__ float round_f16(float x) {
    unsigned short h;
    float r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float round_prec(int prec, float x) {
    return prec == 1 ? round_bf16(x) : (prec == 2 ? round_f16(x) : x);
}

__device__ __forceinline__ size_t gtid() { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t gstride() { return (size_t)gridDim.x * blockDim.x; }

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
