// Fused multi-head attention, flash style: scores never reach global memory. Forward keeps a
// running max and sum per query row (online softmax) and saves only the row log-sum-exp;
// backward recomputes the probabilities from it. Same math, masks and dropout stream as
// kernels/src/ops/attention.rs:
//   S = Q K^T / sqrt(d) (padding keys and, when causal, keys after the query masked),
//   P = softmax(S), P' = P keep / (1 - p), O = P' V, lse_i = log sum_j exp(S_ij);
//   backward with D_i = dO_i . O_i: dV = P'^T dO, dS = P (dP keep/(1-p) - D) / sqrt(d),
//   dQ = dS K, dK = dS^T Q.
// Layouts: qkv [B, T, 3E] (q | k | v, head h in columns h d .. (h+1) d of each part), out and
// dout [B, T, E], lse and delta [B, H, T]. klen[b] = 1 + the last unpadded key of sequence b;
// pad (may be null) [B, T], nonzero = padding. The dropout index of (b, h, i, j) is
// ((b H + h) T + i) T + j, as on the CPU. `prec` rounds q, k, v, dO, P' and dS like the CPU
// backend (0 none, 1 bf16, 2 fp16).

// Work split: a block serves ROWS = 32 rows (queries in the forward and dQ kernels, keys in the
// dK/dV kernel) with SPLIT = MAXDH / 32 threads per row, each owning the 32 head dims
// d = c SPLIT + part (interleaved, so the threads of a row read different shared-memory banks).
// Dot products are summed across a row's threads with a butterfly shuffle, which gives every
// thread the same bits. Each thread keeps at most four 32-float vectors in registers; the
// streamed operand comes through shared memory in tiles of TILE rows.
#define ROWS 32
#define TILE 32

template <int SPLIT>
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
    for (int o = 1; o < SPLIT; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ bool key_masked(const unsigned char* pad, size_t b, size_t t, size_t i,
                                           size_t j, u32 klen, int causal) {
    return j >= klen || (causal && j > i) || (pad && pad[b * t + j]);
}

// Loads rows r0 .. r0+TILE of part `which` (0 q, 1 k, 2 v) of head h into tile[TILE][MAXDH],
// rounded per `prec`; rows past `end` and dims past dh are zero.
template <int MAXDH>
__device__ __forceinline__ void load_tile(float (*tile)[MAXDH], const float* src, size_t stride,
                                          size_t col, size_t r0, size_t end, size_t dh,
                                          int prec) {
    for (size_t x = threadIdx.x; x < TILE * MAXDH; x += blockDim.x) {
        size_t rr = x / MAXDH, d = x % MAXDH, r = r0 + rr;
        float v = (r < end && d < dh) ? src[r * stride + col + d] : 0.0f;
        tile[rr][d] = round_prec(prec, v);
    }
}

template <int MAXDH>
__device__ void attn_forward(float* out, float* lse, const float* qkv, const u32* klen,
                             const unsigned char* pad, u64 batch, u64 t, u64 heads, u64 dh,
                             int causal, float dropout, u64 stream, u32 thr, float drop_scale,
                             int prec) {
    constexpr int SPLIT = MAXDH / 32;
    __shared__ float ks[TILE][MAXDH];
    __shared__ float vs[TILE][MAXDH];
    const size_t e = heads * dh, e3 = 3 * e;
    const size_t bh = blockIdx.y, b = bh / heads, h = bh % heads;
    const int part = threadIdx.x % SPLIT;
    const size_t row0 = (size_t)blockIdx.x * ROWS;
    const size_t i = row0 + threadIdx.x / SPLIT;
    const bool active = i < t;
    const float scale = rsqrtf((float)dh);
    const u32 l = klen[b];
    const float* base = qkv + b * t * e3;
    float q[32], acc[32];
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        int d = c * SPLIT + part;
        q[c] = (active && d < dh) ? round_prec(prec, base[i * e3 + h * dh + d]) : 0.0f;
        acc[c] = 0.0f;
    }
    float m = NEG_INF, sum = 0.0f;
    size_t last_row = min(row0 + ROWS, (size_t)t);
    size_t kend = causal ? min((size_t)l, last_row) : (size_t)l;
    for (size_t j0 = 0; j0 < kend; j0 += TILE) {
        __syncthreads();
        load_tile<MAXDH>(ks, base, e3, e + h * dh, j0, kend, dh, prec);
        load_tile<MAXDH>(vs, base, e3, 2 * e + h * dh, j0, kend, dh, prec);
        __syncthreads();
        for (int jj = 0; jj < TILE && j0 + jj < kend; ++jj) {
            size_t j = j0 + jj;
            float s = 0.0f;
#pragma unroll
            for (int c = 0; c < 32; ++c) s += q[c] * ks[jj][c * SPLIT + part];
            s = row_sum<SPLIT>(s);
            if (!active || key_masked(pad, b, t, i, j, l, causal)) continue;
            if (s > m) {
                float f = m == NEG_INF ? 0.0f : expf((m - s) * scale);
                sum *= f;
#pragma unroll
                for (int c = 0; c < 32; ++c) acc[c] *= f;
                m = s;
            }
            float p = expf((s - m) * scale);
            sum += p;
            if (dropout > 0.0f) {
                u64 idx = ((u64)(bh * t + i)) * t + j;
                p = rng_bits(stream, idx) >= thr ? p * drop_scale : 0.0f;
            }
            p = round_prec(prec, p);
#pragma unroll
            for (int c = 0; c < 32; ++c) acc[c] += p * vs[jj][c * SPLIT + part];
        }
    }
    if (!active) return;
    float inv = m == NEG_INF ? 0.0f : 1.0f / sum;
    if (part == 0) lse[bh * t + i] = m == NEG_INF ? NEG_INF : m * scale + logf(sum);
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        int d = c * SPLIT + part;
        if (d < dh) out[(b * t + i) * e + h * dh + d] = acc[c] * inv;
    }
}

// delta[bh, i] = dout_i . out_i (before dout is rounded).
extern "C" __global__ void attn_backward_delta(float* delta, const float* dout, const float* out,
                                               u64 batch, u64 t, u64 heads, u64 dh) {
    const size_t e = heads * dh;
    for (size_t x = gtid(); x < batch * heads * t; x += gstride()) {
        size_t bh = x / t, i = x % t, b = bh / heads, h = bh % heads;
        const float* a = dout + (b * t + i) * e + h * dh;
        const float* o = out + (b * t + i) * e + h * dh;
        float s = 0.0f;
        for (size_t d = 0; d < dh; ++d) s += a[d] * o[d];
        delta[x] = s;
    }
}

template <int MAXDH>
__device__ void attn_backward_dq(float* dqkv, const float* dout, const float* lse,
                                 const float* delta, const float* qkv, const u32* klen,
                                 const unsigned char* pad, u64 batch, u64 t, u64 heads, u64 dh,
                                 int causal, float dropout, u64 stream, u32 thr, float drop_scale,
                                 int prec) {
    constexpr int SPLIT = MAXDH / 32;
    __shared__ float ks[TILE][MAXDH];
    __shared__ float vs[TILE][MAXDH];
    const size_t e = heads * dh, e3 = 3 * e;
    const size_t bh = blockIdx.y, b = bh / heads, h = bh % heads;
    const int part = threadIdx.x % SPLIT;
    const size_t row0 = (size_t)blockIdx.x * ROWS;
    const size_t i = row0 + threadIdx.x / SPLIT;
    const bool active = i < t;
    const float scale = rsqrtf((float)dh);
    const u32 l = klen[b];
    const float* base = qkv + b * t * e3;
    float q[32], g[32], dq[32];
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        int d = c * SPLIT + part;
        bool in = active && d < dh;
        q[c] = in ? round_prec(prec, base[i * e3 + h * dh + d]) : 0.0f;
        g[c] = in ? round_prec(prec, dout[(b * t + i) * e + h * dh + d]) : 0.0f;
        dq[c] = 0.0f;
    }
    const float li = active ? lse[bh * t + i] : NEG_INF;
    const float di = active ? delta[bh * t + i] : 0.0f;
    size_t last_row = min(row0 + ROWS, (size_t)t);
    size_t kend = causal ? min((size_t)l, last_row) : (size_t)l;
    for (size_t j0 = 0; j0 < kend; j0 += TILE) {
        __syncthreads();
        load_tile<MAXDH>(ks, base, e3, e + h * dh, j0, kend, dh, prec);
        load_tile<MAXDH>(vs, base, e3, 2 * e + h * dh, j0, kend, dh, prec);
        __syncthreads();
        for (int jj = 0; jj < TILE && j0 + jj < kend; ++jj) {
            size_t j = j0 + jj;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < 32; ++c) {
                s += q[c] * ks[jj][c * SPLIT + part];
                dp += g[c] * vs[jj][c * SPLIT + part];
            }
            s = row_sum<SPLIT>(s);
            dp = row_sum<SPLIT>(dp);
            if (!active || li == NEG_INF || key_masked(pad, b, t, i, j, l, causal)) continue;
            float p = expf(s * scale - li);
            if (dropout > 0.0f) {
                u64 idx = ((u64)(bh * t + i)) * t + j;
                dp = rng_bits(stream, idx) >= thr ? dp * drop_scale : 0.0f;
            }
            float ds = round_prec(prec, p * (dp - di) * scale);
#pragma unroll
            for (int c = 0; c < 32; ++c) dq[c] += ds * ks[jj][c * SPLIT + part];
        }
    }
    if (!active) return;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        int d = c * SPLIT + part;
        if (d < dh) dqkv[(b * t + i) * e3 + h * dh + d] = dq[c];
    }
}

template <int MAXDH>
__device__ void attn_backward_dkdv(float* dqkv, const float* dout, const float* lse,
                                   const float* delta, const float* qkv, const u32* klen,
                                   const unsigned char* pad, u64 batch, u64 t, u64 heads, u64 dh,
                                   int causal, float dropout, u64 stream, u32 thr,
                                   float drop_scale, int prec) {
    constexpr int SPLIT = MAXDH / 32;
    __shared__ float qs[TILE][MAXDH];
    __shared__ float gs[TILE][MAXDH];
    __shared__ float ls[TILE], dl[TILE];
    const size_t e = heads * dh, e3 = 3 * e;
    const size_t bh = blockIdx.y, b = bh / heads, h = bh % heads;
    const int part = threadIdx.x % SPLIT;
    const size_t row0 = (size_t)blockIdx.x * ROWS;
    const size_t j = row0 + threadIdx.x / SPLIT;
    const float scale = rsqrtf((float)dh);
    const u32 l = klen[b];
    const float* base = qkv + b * t * e3;
    // A key past the last unpadded one, or a padding key, gets zero gradients (as on the CPU).
    const bool active = j < t && !(j >= l || (pad && pad[b * t + j]));
    float k[32], v[32], dk[32], dv[32];
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        int d = c * SPLIT + part;
        bool in = active && d < dh;
        k[c] = in ? round_prec(prec, base[j * e3 + e + h * dh + d]) : 0.0f;
        v[c] = in ? round_prec(prec, base[j * e3 + 2 * e + h * dh + d]) : 0.0f;
        dk[c] = 0.0f;
        dv[c] = 0.0f;
    }
    // Causal: only queries at or after the block's first key see its keys.
    size_t first_q = causal ? row0 : 0;
    bool block_has_keys = row0 < l;
    for (size_t i0 = first_q; block_has_keys && i0 < t; i0 += TILE) {
        __syncthreads();
        load_tile<MAXDH>(qs, base, e3, h * dh, i0, t, dh, prec);
        load_tile<MAXDH>(gs, dout + b * t * e, e, h * dh, i0, t, dh, prec);
        for (size_t ii = threadIdx.x; ii < TILE; ii += blockDim.x) {
            size_t i = i0 + ii;
            ls[ii] = i < t ? lse[bh * t + i] : NEG_INF;
            dl[ii] = i < t ? delta[bh * t + i] : 0.0f;
        }
        __syncthreads();
        for (int ii = 0; ii < TILE && i0 + ii < t; ++ii) {
            size_t i = i0 + ii;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < 32; ++c) {
                s += qs[ii][c * SPLIT + part] * k[c];
                dp += gs[ii][c * SPLIT + part] * v[c];
            }
            s = row_sum<SPLIT>(s);
            dp = row_sum<SPLIT>(dp);
            if (!active || (causal && j > i) || ls[ii] == NEG_INF) continue;
            float p = expf(s * scale - ls[ii]);
            float pd = p;
            if (dropout > 0.0f) {
                u64 idx = ((u64)(bh * t + i)) * t + j;
                bool keep = rng_bits(stream, idx) >= thr;
                pd = keep ? p * drop_scale : 0.0f;
                dp = keep ? dp * drop_scale : 0.0f;
            }
            pd = round_prec(prec, pd);
            float ds = round_prec(prec, p * (dp - dl[ii]) * scale);
#pragma unroll
            for (int c = 0; c < 32; ++c) {
                dv[c] += pd * gs[ii][c * SPLIT + part];
                dk[c] += ds * qs[ii][c * SPLIT + part];
            }
        }
    }
    if (j >= t) return;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        int d = c * SPLIT + part;
        if (d < dh) {
            dqkv[(b * t + j) * e3 + e + h * dh + d] = dk[c];
            dqkv[(b * t + j) * e3 + 2 * e + h * dh + d] = dv[c];
        }
    }
}

#define ATTN_ARGS                                                                                \
    const u32 *klen, const unsigned char *pad, u64 batch, u64 t, u64 heads, u64 dh, int causal, \
        float dropout, u64 stream, u32 thr, float drop_scale, int prec
#define ATTN_PASS klen, pad, batch, t, heads, dh, causal, dropout, stream, thr, drop_scale, prec
#define ATTN_KERNELS(D)                                                                          \
    extern "C" __global__ void attn_forward_##D(float* out, float* lse, const float* qkv,        \
                                                ATTN_ARGS) {                                     \
        attn_forward<D>(out, lse, qkv, ATTN_PASS);                                               \
    }                                                                                            \
    extern "C" __global__ void attn_backward_dq_##D(float* dqkv, const float* dout,              \
                                                    const float* lse, const float* delta,        \
                                                    const float* qkv, ATTN_ARGS) {               \
        attn_backward_dq<D>(dqkv, dout, lse, delta, qkv, ATTN_PASS);                             \
    }                                                                                            \
    extern "C" __global__ void attn_backward_dkdv_##D(float* dqkv, const float* dout,            \
                                                      const float* lse, const float* delta,      \
                                                      const float* qkv, ATTN_ARGS) {             \
        attn_backward_dkdv<D>(dqkv, dout, lse, delta, qkv, ATTN_PASS);                           \
    }

// Head dims up to MAXDH; the backend picks the smallest that fits and launches blocks of
// ROWS * SPLIT = MAXDH threads, ceil(T / ROWS) by B * H of them.
ATTN_KERNELS(32)
ATTN_KERNELS(64)
ATTN_KERNELS(128)
