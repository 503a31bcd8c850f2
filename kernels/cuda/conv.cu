// Image ops of the pose family's UNet on NCHW buffers, the CUDA side of backend/conv.rs.
// Convolutions are im2col + cuBLASLt GEMM (composed in backend/cuda/conv.rs); these kernels are
// the unfolding, its adjoint, bias planes, max-pooling, bilinear resizing and channel
// concatenation. Every kernel is a grid-stride loop with one thread per *output* element that
// gathers what it needs, so no two threads write one address: no atomics, and results do not
// depend on scheduling. Semantics follow kernels/src/ops/conv.rs line for line.

// The column matrix of one image: col[(c·k + ky)·k + kx, oy·wo + ox] = img[c, oy·s + ky − pt,
// ox·s + kx − pl], 0 outside the image.
extern "C" __global__ void conv_im2col(float* col, const float* img, u32 c, u32 h, u32 w, u32 ho,
                                       u32 wo, u32 k, u32 s, u32 pt, u32 pl) {
    size_t px = (size_t)ho * wo, total = (size_t)c * k * k * px;
    for (size_t i = gtid(); i < total; i += gstride()) {
        size_t r = i / px, p = i % px;
        u32 kx = (u32)(r % k), ky = (u32)((r / k) % k), ch = (u32)(r / ((size_t)k * k));
        long long iy = (long long)(p / wo) * s + ky - pt;
        long long ix = (long long)(p % wo) * s + kx - pl;
        col[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? img[((size_t)ch * h + iy) * w + ix]
                                                          : 0.0f;
    }
}

// The adjoint of conv_im2col, gathered per image pixel: img[c, iy, ix] = (bias[c] if has_bias)
// + Σ over the (ky, kx) whose output position (oy, ox) read this pixel of col[(c·k+ky)·k+kx,
// oy·wo+ox]. Overwrites img.
extern "C" __global__ void conv_col2im(float* img, const float* col, const float* bias,
                                       int has_bias, u32 c, u32 h, u32 w, u32 ho, u32 wo, u32 k,
                                       u32 s, u32 pt, u32 pl) {
    size_t px = (size_t)ho * wo, total = (size_t)c * h * w;
    for (size_t i = gtid(); i < total; i += gstride()) {
        u32 ix = (u32)(i % w), iy = (u32)((i / w) % h), ch = (u32)(i / ((size_t)h * w));
        float acc = has_bias ? bias[ch] : 0.0f;
        for (u32 ky = 0; ky < k; ++ky) {
            long long ty = (long long)iy + pt - ky;  // = oy·s
            if (ty < 0 || ty % s != 0 || ty / s >= ho) continue;
            size_t oy = (size_t)(ty / s);
            for (u32 kx = 0; kx < k; ++kx) {
                long long tx = (long long)ix + pl - kx;
                if (tx < 0 || tx % s != 0 || tx / s >= wo) continue;
                size_t ox = (size_t)(tx / s);
                acc += col[(((size_t)ch * k + ky) * k + kx) * px + oy * wo + ox];
            }
        }
        img[i] = acc;
    }
}

// y[n, c, p] = b[c] over `px` pixels per plane (the GEMM then accumulates on top).
extern "C" __global__ void bias_fill_planes(float* y, const float* b, u64 n, u64 c, u64 px) {
    for (size_t i = gtid(); i < n * c * px; i += gstride()) y[i] = b[(i / px) % c];
}

// The first maximum of the window of output (oy, ox) in row-major order, as a flat index into
// the plane; −1 when a padded position wins (zero_pad: padding holds 0) or the window is empty.
// NaN wins, as in PyTorch.
__device__ __forceinline__ long long pool_argmax(const float* plane, u32 h, u32 w, u32 k, u32 s,
                                                 u32 pt, u32 pl, int zero_pad, u32 oy, u32 ox) {
    bool any = false;
    float best = 0.0f;
    long long at = -1;
    for (u32 ky = 0; ky < k; ++ky) {
        long long iy = (long long)oy * s + ky - pt;
        for (u32 kx = 0; kx < k; ++kx) {
            long long ix = (long long)ox * s + kx - pl;
            float v;
            long long here;
            if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
                here = iy * w + ix;
                v = plane[here];
            } else if (zero_pad) {
                here = -1;
                v = 0.0f;
            } else {
                continue;
            }
            if (!any || v > best || v != v) {
                any = true;
                best = v;
                at = here;
            }
        }
    }
    return at;
}

extern "C" __global__ void maxpool_forward(float* y, const float* x, u64 planes, u32 h, u32 w,
                                           u32 ho, u32 wo, u32 k, u32 s, u32 pt, u32 pl,
                                           int zero_pad) {
    size_t opx = (size_t)ho * wo;
    for (size_t i = gtid(); i < planes * opx; i += gstride()) {
        size_t q = i / opx, p = i % opx;
        const float* plane = x + q * h * w;
        long long at = pool_argmax(plane, h, w, k, s, pt, pl, zero_pad, (u32)(p / wo), (u32)(p % wo));
        y[i] = at >= 0 ? plane[at] : (zero_pad ? 0.0f : NEG_INF);
    }
}

// dx[q, iy, ix] = Σ dy[q, oy, ox] over the windows containing (iy, ix) whose first maximum it
// is, in (oy, ox) order. Overwrites dx.
extern "C" __global__ void maxpool_backward(float* dx, const float* dy, const float* x,
                                            u64 planes, u32 h, u32 w, u32 ho, u32 wo, u32 k,
                                            u32 s, u32 pt, u32 pl, int zero_pad) {
    size_t ipx = (size_t)h * w;
    for (size_t i = gtid(); i < planes * ipx; i += gstride()) {
        size_t q = i / ipx, here = i % ipx;
        long long iy = (long long)(here / w), ix = (long long)(here % w);
        const float* plane = x + q * ipx;
        // Windows oy·s − pt ≤ iy ≤ oy·s − pt + k − 1.
        long long ylo = iy + pt - (long long)k + 1, xlo = ix + pl - (long long)k + 1;
        ylo = ylo <= 0 ? 0 : (ylo + s - 1) / s;
        xlo = xlo <= 0 ? 0 : (xlo + s - 1) / s;
        long long yhi = (iy + pt) / s, xhi = (ix + pl) / s;
        if (yhi >= ho) yhi = (long long)ho - 1;
        if (xhi >= wo) xhi = (long long)wo - 1;
        float acc = 0.0f;
        for (long long oy = ylo; oy <= yhi; ++oy)
            for (long long ox = xlo; ox <= xhi; ++ox)
                if (pool_argmax(plane, h, w, k, s, pt, pl, zero_pad, (u32)oy, (u32)ox) ==
                    (long long)here)
                    acc += dy[q * ho * wo + oy * wo + ox];
        dx[i] = acc;
    }
}

// PyTorch's linear source taps for align_corners=False, in the CPU op's f32 arithmetic (no FMA
// contraction): src = max((d + 0.5)·(n_in/n_out) − 0.5, 0), i0 = ⌊src⌋, i1 = min(i0+1, n_in−1),
// weights 1 − (src − i0) and src − i0.
__device__ __forceinline__ void linear_tap(u32 d, u32 n_in, u32 n_out, u32* i0, u32* i1, float* l0,
                                           float* l1) {
    float scale = __fdiv_rn((float)n_in, (float)n_out);
    float src = __fsub_rn(__fmul_rn(__fadd_rn((float)d, 0.5f), scale), 0.5f);
    if (src < 0.0f) src = 0.0f;
    u32 a = (u32)src;
    if (a > n_in - 1) a = n_in - 1;
    *i0 = a;
    *i1 = a + 1 < n_in ? a + 1 : a;
    *l1 = __fsub_rn(src, (float)a);
    *l0 = __fsub_rn(1.0f, *l1);
}

extern "C" __global__ void upsample_bilinear_forward(float* y, const float* x, u64 nc, u32 h,
                                                     u32 w, u32 ho, u32 wo) {
    size_t opx = (size_t)ho * wo;
    for (size_t i = gtid(); i < nc * opx; i += gstride()) {
        size_t q = i / opx, p = i % opx;
        u32 y0, y1, x0, x1;
        float a0, a1, b0, b1;
        linear_tap((u32)(p / wo), h, ho, &y0, &y1, &a0, &a1);
        linear_tap((u32)(p % wo), w, wo, &x0, &x1, &b0, &b1);
        const float* r0 = x + q * h * w + (size_t)y0 * w;
        const float* r1 = x + q * h * w + (size_t)y1 * w;
        y[i] = a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]);
    }
}

// The weight output index d gives input index `at` (0 when it is neither tap; both taps when
// they coincide at the edge).
__device__ __forceinline__ float tap_weight(u32 d, u32 n_in, u32 n_out, u32 at) {
    u32 i0, i1;
    float l0, l1;
    linear_tap(d, n_in, n_out, &i0, &i1, &l0, &l1);
    return (i0 == at ? l0 : 0.0f) + (i1 == at ? l1 : 0.0f);
}

// The output indices whose taps can reach input index `at`: src ∈ [at − 1, at + 1), so
// d ∈ [(at − 0.5)/scale − 0.5, (at + 1.5)/scale − 0.5), widened by one on each side.
__device__ __forceinline__ void tap_range(u32 at, u32 n_in, u32 n_out, u32* lo, u32* hi) {
    float inv = (float)n_out / (float)n_in;
    long long a = (long long)floorf(((float)at - 0.5f) * inv - 0.5f) - 1;
    long long b = (long long)ceilf(((float)at + 1.5f) * inv - 0.5f) + 1;
    *lo = a < 0 ? 0 : (u32)a;
    *hi = b >= (long long)n_out ? n_out : (u32)b;  // exclusive
}

// dx[q, iy, ix] = Σ over outputs (oy, ox) whose taps reach it of wy·wx·dy. Overwrites dx.
extern "C" __global__ void upsample_bilinear_backward(float* dx, const float* dy, u64 nc, u32 h,
                                                      u32 w, u32 ho, u32 wo) {
    size_t ipx = (size_t)h * w;
    for (size_t i = gtid(); i < nc * ipx; i += gstride()) {
        size_t q = i / ipx;
        u32 iy = (u32)((i % ipx) / w), ix = (u32)(i % w);
        u32 ylo, yhi, xlo, xhi;
        tap_range(iy, h, ho, &ylo, &yhi);
        tap_range(ix, w, wo, &xlo, &xhi);
        const float* g = dy + q * ho * wo;
        float acc = 0.0f;
        for (u32 oy = ylo; oy < yhi; ++oy) {
            float wy = tap_weight(oy, h, ho, iy);
            if (wy == 0.0f) continue;
            for (u32 ox = xlo; ox < xhi; ++ox) {
                float wx = tap_weight(ox, w, wo, ix);
                if (wx != 0.0f) acc += wy * wx * g[(size_t)oy * wo + ox];
            }
        }
        dx[i] = acc;
    }
}

// out[n] = [a[n] (la values); b[n] (lb values)], la = ca·hw, lb = cb·hw.
extern "C" __global__ void concat_channels(float* out, const float* a, u64 la, const float* b,
                                           u64 lb, u64 n) {
    size_t per = la + lb;
    for (size_t i = gtid(); i < n * per; i += gstride()) {
        size_t img = i / per, r = i % per;
        out[i] = r < la ? a[img * la + r] : b[img * lb + (r - la)];
    }
}

// The backward of concat_channels: da[n] (= or +=) dout[n][..la], db[n] (= or +=) the rest.
extern "C" __global__ void split_channels(float* da, int acc_a, float* db, int acc_b,
                                          const float* dout, u64 la, u64 lb, u64 n) {
    size_t per = la + lb;
    for (size_t i = gtid(); i < n * per; i += gstride()) {
        size_t img = i / per, r = i % per;
        float v = dout[i];
        if (r < la) {
            float* d = da + img * la + r;
            *d = acc_a ? *d + v : v;
        } else {
            float* d = db + img * lb + (r - la);
            *d = acc_b ? *d + v : v;
        }
    }
}
