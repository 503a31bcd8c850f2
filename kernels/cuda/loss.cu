// Losses. Each row's (or element's) contribution is written to a per-row array and the host
// adds them in order in f64, so the loss does not depend on scheduling.

// Softmax cross-entropy, one block per row: dz = (softmax(z) - onehot(t)) * s, loss[r] =
// logsumexp(z) - z[t]; rows whose target is -100 get dz = 0 and loss 0.
extern "C" __global__ void cross_entropy(float* dz, double* loss, const float* z,
                                         const long long* targets, u64 n, u64 v, float s) {
    __shared__ float scratch[32];
    size_t r = blockIdx.x;
    if (r >= n) return;
    const float* zr = z + r * v;
    float* dr = dz + r * v;
    long long t = targets[r];
    if (t == -100) {
        for (size_t j = threadIdx.x; j < v; j += blockDim.x) dr[j] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0.0;
        return;
    }
    float m = NEG_INF;
    for (size_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (size_t j = threadIdx.x; j < v; j += blockDim.x) {
        float e = expf(zr[j] - m);
        dr[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    float f = s / sum;
    for (size_t j = threadIdx.x; j < v; j += blockDim.x) dr[j] *= f;
    __syncthreads();
    if (threadIdx.x == 0) {
        dr[t] -= s;
        loss[r] = (double)((m + logf(sum)) - zr[t]);
    }
}

// err[i] = (y - t)^2 in double; with dy, dy = s (y - t).
extern "C" __global__ void squared_error(float* dy, double* err, const float* y, const float* t,
                                         u64 n, float s) {
    for (size_t i = gtid(); i < n; i += gstride()) {
        float d = y[i] - t[i];
        if (dy) dy[i] = s * d;
        err[i] = (double)d * (double)d;
    }
}
