// LayerNorm over the last dim c (biased variance), one block per row; saves mean and 1/std.

extern "C" __global__ void layernorm_forward(float* y, float* mean, float* rstd, const float* x,
                                             const float* gamma, const float* beta, u64 n, u64 c,
                                             float eps) {
    __shared__ float scratch[32];
    size_t r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + r * c;
    float s = 0.0f;
    for (size_t j = threadIdx.x; j < c; j += blockDim.x) s += xr[j];
    float mu = block_sum(s, scratch) * (1.0f / (float)c);
    float q = 0.0f;
    for (size_t j = threadIdx.x; j < c; j += blockDim.x) {
        float d = xr[j] - mu;
        q += d * d;
    }
    float var = block_sum(q, scratch) * (1.0f / (float)c);
    float rs = 1.0f / sqrtf(var + eps);
    for (size_t j = threadIdx.x; j < c; j += blockDim.x)
        y[r * c + j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma; written or added (`accumulate`).
extern "C" __global__ void layernorm_backward_dx(float* dx, int accumulate, const float* dy,
                                                 const float* x, const float* mean,
                                                 const float* rstd, const float* gamma, u64 n,
                                                 u64 c) {
    __shared__ float scratch[32];
    size_t r = blockIdx.x;
    if (r >= n) return;
    float mu = mean[r], rs = rstd[r];
    const float* xr = x + r * c;
    const float* dyr = dy + r * c;
    float sg = 0.0f, sgx = 0.0f;
    for (size_t j = threadIdx.x; j < c; j += blockDim.x) {
        float g = dyr[j] * gamma[j];
        sg += g;
        sgx += g * (xr[j] - mu) * rs;
    }
    float mg = block_sum(sg, scratch) * (1.0f / (float)c);
    float mgx = block_sum(sgx, scratch) * (1.0f / (float)c);
    for (size_t j = threadIdx.x; j < c; j += blockDim.x) {
        float xh = (xr[j] - mu) * rs;
        float v = rs * (dyr[j] * gamma[j] - mg - xh * mgx);
        if (accumulate) dx[r * c + j] += v; else dx[r * c + j] = v;
    }
}

// dgamma[j] += sum_r dy xhat, dbeta[j] += sum_r dy; one thread per column, rows in order.
extern "C" __global__ void layernorm_backward_params(float* dgamma, float* dbeta, const float* dy,
                                                     const float* x, const float* mean,
                                                     const float* rstd, u64 n, u64 c) {
    size_t j = gtid();
    if (j >= c) return;
    float dg = 0.0f, db = 0.0f;
    for (size_t r = 0; r < n; ++r) {
        float d = dy[r * c + j];
        dg += d * (x[r * c + j] - mean[r]) * rstd[r];
        db += d;
    }
    dgamma[j] += dg;
    dbeta[j] += db;
}
