// Elementwise ops and whole-buffer passes: activations, dropout, residuals, scaling, rounding,
// casts, bias rows and the optimizer step. Grid-stride loops; one thread per element.

// y[r, c] = b[c] for every row (the GEMM then accumulates on top).
extern "C" __global__ void bias_fill_rows(float* y, const float* b, u64 n, u64 o) {
    for (size_t i = gtid(); i < n * o; i += gstride()) y[i] = b[i % o];
}

// db[c] += sum over rows of dy[r, c], rows summed in order (deterministic).
extern "C" __global__ void bias_backward(float* db, const float* dy, u64 n, u64 o) {
    size_t c = gtid();
    if (c >= o) return;
    float s = 0.0f;
    for (size_t r = 0; r < n; ++r) s += dy[r * o + c];
    db[c] += s;
}

extern "C" __global__ void relu_forward(float* y, const float* x, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

extern "C" __global__ void relu_backward(float* dx, const float* dy, const float* x, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

// Exact-erf GELU (PyTorch's approximate='none'): y = x/2 (1 + erf(x/sqrt 2)).
extern "C" __global__ void gelu_forward(float* y, const float* x, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// dx = dy (Phi(x) + x phi(x)).
extern "C" __global__ void gelu_backward(float* dx, const float* dy, const float* x, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = 0.3989422804014327f * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

// In place: x[i] = keep(i) ? x[i] * scale : 0, keep(i) = bits(stream, i) >= thr.
extern "C" __global__ void dropout(float* x, u64 n, u64 stream, u32 thr, float scale) {
    for (size_t i = gtid(); i < n; i += gstride())
        x[i] = rng_bits(stream, (u64)i) >= thr ? x[i] * scale : 0.0f;
}

extern "C" __global__ void residual_forward(float* out, const float* a, const float* b, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) out[i] = a[i] + b[i];
}

extern "C" __global__ void add_inplace(float* acc, const float* g, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) acc[i] += g[i];
}

extern "C" __global__ void fill(float* x, u64 n, float v) {
    for (size_t i = gtid(); i < n; i += gstride()) x[i] = v;
}

extern "C" __global__ void scale(float* x, u64 n, float f) {
    for (size_t i = gtid(); i < n; i += gstride()) x[i] *= f;
}

extern "C" __global__ void round_to(float* x, u64 n, int prec) {
    for (size_t i = gtid(); i < n; i += gstride()) x[i] = round_prec(prec, x[i]);
}

// The 16-bit pattern of x rounded to bf16 (prec 1) or fp16 (prec 2): cuBLASLt's operands.
extern "C" __global__ void cast_to_half(unsigned short* out, const float* x, u64 n, int prec) {
    for (size_t i = gtid(); i < n; i += gstride()) {
        float v = x[i];
        if (prec == 1) {
            out[i] = (unsigned short)(__float_as_uint(round_bf16(v)) >> 16);
        } else {
            unsigned short h;
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
            out[i] = h;
        }
    }
}

// bf16 bit patterns back to f32 (exact): gradients after a bf16 all-reduce.
extern "C" __global__ void bf16_to_f32(float* out, const unsigned short* x, u64 n) {
    for (size_t i = gtid(); i < n; i += gstride()) out[i] = __uint_as_float((unsigned)x[i] << 16);
}

// One Adam(W) step over elements [start, end) (PyTorch's formulation, see ops/optim.rs):
// AdamW p *= decay; Adam g += wd p; m, v moments; p -= step m / (sqrt(v)/bc2_sqrt + eps).
// Parameters start..end; their moments start at m[mstart], v[mstart] (mstart = start when the
// moments are laid out like the parameters, elsewhere when they hold only what trains).
extern "C" __global__ void adam_segment(float* p, const float* g, float* m, float* v, u64 start,
                                        u64 end, u64 mstart, float step, float bc2_sqrt, float b1,
                                        float b2, float ob1, float ob2, float eps, float wd,
                                        float decay, int decoupled) {
    for (size_t i = start + gtid(); i < end; i += gstride()) {
        size_t k = mstart + (i - start);
        float gi = g[i];
        float pi = p[i];
        if (decoupled) pi *= decay; else gi += wd * pi;
        float mi = b1 * m[k] + ob1 * gi;
        float vi = b2 * v[k] + ob2 * gi * gi;
        m[k] = mi;
        v[k] = vi;
        p[i] = pi - step * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

// Per-block partial sums of x^2 in double (the host adds the partials in order), and a count
// of non-finite elements.
extern "C" __global__ void sumsq_partials(double* partial, unsigned int* nonfinite,
                                          const float* x, u64 n) {
    __shared__ double s[256];
    double acc = 0.0;
    unsigned int bad = 0;
    for (size_t i = gtid(); i < n; i += gstride()) {
        float v = x[i];
        if (!isfinite(v)) bad++;
        acc += (double)v * (double)v;
    }
    s[threadIdx.x] = acc;
    if (bad) atomicAdd(nonfinite, bad);
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) s[threadIdx.x] += s[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}
