// Embedding lookups and row gather/scatter/mean. Index arrays are copied from the host per call
// (u32 ids/positions, u64 rows) and checked on the host before launch.

// out[r, :] = w[idx[r], :]
extern "C" __global__ void embedding_forward(float* out, const u32* idx, const float* w, u64 n,
                                             u64 dim) {
    for (size_t i = gtid(); i < n * dim; i += gstride()) {
        size_t r = i / dim, k = i % dim;
        out[i] = w[(size_t)idx[r] * dim + k];
    }
}

// dw[idx[r], :] += dout[r, :] (atomic: a token may repeat within the batch).
extern "C" __global__ void embedding_backward(float* dw, const float* dout, const u32* idx, u64 n,
                                              u64 dim) {
    for (size_t i = gtid(); i < n * dim; i += gstride()) {
        size_t r = i / dim, k = i % dim;
        atomicAdd(&dw[(size_t)idx[r] * dim + k], dout[i]);
    }
}

// out[r] = G[ids[r]] + P[pos[r]] (+ w values[r] + b when `vw` is not null).
extern "C" __global__ void token_embedding_forward(float* out, const u32* ids, const u32* pos,
                                                   const float* gene, const float* position,
                                                   const float* vw, const float* vb,
                                                   const float* values, u64 n, u64 dim) {
    for (size_t i = gtid(); i < n * dim; i += gstride()) {
        size_t r = i / dim, k = i % dim;
        float v = gene[(size_t)ids[r] * dim + k] + position[(size_t)pos[r] * dim + k];
        if (vw) v += vw[k] * values[r] + vb[k];
        out[i] = v;
    }
}

extern "C" __global__ void token_embedding_backward(float* dgene, float* dposition,
                                                    const float* dout, const u32* ids,
                                                    const u32* pos, u64 n, u64 dim) {
    for (size_t i = gtid(); i < n * dim; i += gstride()) {
        size_t r = i / dim, k = i % dim;
        atomicAdd(&dgene[(size_t)ids[r] * dim + k], dout[i]);
        atomicAdd(&dposition[(size_t)pos[r] * dim + k], dout[i]);
    }
}

// The value projection's gradients: dw[k] += sum_r dout[r,k] values[r], db[k] += sum_r dout[r,k].
extern "C" __global__ void value_projection_backward(float* dw, float* db, const float* dout,
                                                     const float* values, u64 n, u64 dim) {
    size_t k = gtid();
    if (k >= dim) return;
    float sw = 0.0f, sb = 0.0f;
    for (size_t r = 0; r < n; ++r) {
        float d = dout[r * dim + k];
        sw += d * values[r];
        sb += d;
    }
    dw[k] += sw;
    db[k] += sb;
}

extern "C" __global__ void gather_rows(float* out, const float* x, const u64* rows, u64 n,
                                       u64 dim) {
    for (size_t i = gtid(); i < n * dim; i += gstride()) {
        size_t r = i / dim, k = i % dim;
        out[i] = x[rows[r] * dim + k];
    }
}

// dst[rows[r]] = src[r], or += (atomic, since a row may be listed twice).
extern "C" __global__ void scatter_rows(float* dst, const float* src, const u64* rows, u64 n,
                                        u64 dim, int accumulate) {
    for (size_t i = gtid(); i < n * dim; i += gstride()) {
        size_t r = i / dim, k = i % dim;
        if (accumulate) atomicAdd(&dst[rows[r] * dim + k], src[i]);
        else dst[rows[r] * dim + k] = src[i];
    }
}

// out[g] = mean of x[rows[k]] over k in offsets[g]..offsets[g+1] (0 for an empty group);
// one block per group, the sum in order of k.
extern "C" __global__ void mean_rows(float* out, const float* x, const u64* rows,
                                     const u64* offsets, u64 groups, u64 dim) {
    size_t g = blockIdx.x;
    if (g >= groups) return;
    u64 a = offsets[g], b = offsets[g + 1];
    float inv = 1.0f / (float)(b > a ? b - a : 1);
    for (size_t k = threadIdx.x; k < dim; k += blockDim.x) {
        float s = 0.0f;
        for (u64 j = a; j < b; ++j) s += x[rows[j] * dim + k];
        out[g * dim + k] = s * inv;
    }
}
