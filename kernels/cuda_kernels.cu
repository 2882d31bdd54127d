// minicnn's CUDA kernels, compiled once per dtype by kernels/gpu.py through CuPy
// (MINICNN_REAL is defined as float or double on the compiler command line).
//
// Layouts and argument conventions are those of kernels/reference.py:
//   x (N, C, H, W) contiguous; cols (C*kh*kw, N*Ho*Wo); padding given as (top, left)
//   offsets, the bottom/right padding being implied by Ho, Wo.
//
// Every kernel is a grid-stride loop with one thread per element it *writes*.
// col2im and the average-pool / depthwise input gradients are gathers: a thread
// owns one input pixel and sums every contribution that reaches it, so no two
// threads write the same address and no atomics are needed (Chainer's design).
// Only max-pool's backward scatters (each output routes its gradient to one
// argmax pixel, and overlapping windows may pick the same pixel): it uses atomicAdd.

typedef MINICNN_REAL real;

#define GRID_LOOP(i, total) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void im2col(const real* x, real* cols, int N, int C, int H, int W,
                                  int kh, int kw, int sh, int sw, int pt, int pl,
                                  int dh, int dw, int Ho, int Wo) {
    const long long P = (long long)N * Ho * Wo;
    GRID_LOOP(idx, (long long)C * kh * kw * P) {
        const long long q = idx % P, r = idx / P;
        const int ow = q % Wo, oh = (q / Wo) % Ho, n = q / ((long long)Ho * Wo);
        const int j = r % kw, i = (r / kw) % kh, c = r / (kh * kw);
        const int h = oh * sh - pt + i * dh, w = ow * sw - pl + j * dw;
        cols[idx] = (h >= 0 && h < H && w >= 0 && w < W)
                        ? x[(((long long)n * C + c) * H + h) * W + w] : (real)0;
    }
}

extern "C" __global__ void col2im(const real* cols, real* x, int N, int C, int H, int W,
                                  int kh, int kw, int sh, int sw, int pt, int pl,
                                  int dh, int dw, int Ho, int Wo) {
    const long long P = (long long)N * Ho * Wo;
    GRID_LOOP(idx, (long long)N * C * H * W) {
        const int w = idx % W, h = (idx / W) % H;
        const int c = (idx / ((long long)H * W)) % C, n = idx / ((long long)C * H * W);
        real acc = 0;
        for (int i = 0; i < kh; ++i) {
            const int th = h + pt - i * dh;            // = oh * sh for the output that used tap i
            if (th < 0 || th % sh != 0 || th / sh >= Ho) continue;
            const int oh = th / sh;
            for (int j = 0; j < kw; ++j) {
                const int tw = w + pl - j * dw;
                if (tw < 0 || tw % sw != 0 || tw / sw >= Wo) continue;
                const int ow = tw / sw;
                acc += cols[((long long)(c * kh + i) * kw + j) * P + ((long long)n * Ho + oh) * Wo + ow];
            }
        }
        x[idx] = acc;
    }
}

extern "C" __global__ void maxpool_forward(const real* x, real* y, long long* argmax, int N, int C,
                                           int H, int W, int kh, int kw, int sh, int sw,
                                           int pt, int pl, int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * Ho * Wo) {
        const int ow = idx % Wo, oh = (idx / Wo) % Ho;
        const long long plane = idx / ((long long)Ho * Wo);
        const real* xp = x + plane * H * W;
        real best = 0;                                 // replaced by the first in-bounds cell
        long long best_at = -1;
        for (int i = 0; i < kh; ++i) {
            const int h = oh * sh - pt + i;
            if (h < 0 || h >= H) continue;             // padded cells never win
            for (int j = 0; j < kw; ++j) {
                const int w = ow * sw - pl + j;
                if (w < 0 || w >= W) continue;
                const real v = xp[h * W + w];
                if (v > best || best_at < 0) { best = v; best_at = (long long)h * W + w; }  // ties: first
            }
        }
        y[idx] = best;
        argmax[idx] = best_at;
    }
}

extern "C" __global__ void maxpool_backward(const real* dy, const long long* argmax, real* dx,
                                            int N, int C, int H, int W, int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * Ho * Wo) {
        const long long plane = idx / ((long long)Ho * Wo);
        atomicAdd(dx + plane * H * W + argmax[idx], dy[idx]);
    }
}

extern "C" __global__ void avgpool_forward(const real* x, real* y, int N, int C, int H, int W,
                                           int kh, int kw, int sh, int sw, int pt, int pl,
                                           int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * Ho * Wo) {
        const int ow = idx % Wo, oh = (idx / Wo) % Ho;
        const real* xp = x + idx / ((long long)Ho * Wo) * H * W;
        real acc = 0;
        for (int i = 0; i < kh; ++i) {
            const int h = oh * sh - pt + i;
            if (h < 0 || h >= H) continue;             // padded cells add zero...
            for (int j = 0; j < kw; ++j) {
                const int w = ow * sw - pl + j;
                if (w >= 0 && w < W) acc += xp[h * W + w];
            }
        }
        y[idx] = acc / (real)(kh * kw);                  // ...but still count (torch's default)
    }
}

extern "C" __global__ void avgpool_backward(const real* dy, real* dx, int N, int C, int H, int W,
                                            int kh, int kw, int sh, int sw, int pt, int pl,
                                            int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * H * W) {
        const int w = idx % W, h = (idx / W) % H;
        const real* dyp = dy + idx / ((long long)H * W) * Ho * Wo;
        real acc = 0;
        for (int i = 0; i < kh; ++i) {
            const int th = h + pt - i;
            if (th < 0 || th % sh != 0 || th / sh >= Ho) continue;
            for (int j = 0; j < kw; ++j) {
                const int tw = w + pl - j;
                if (tw < 0 || tw % sw != 0 || tw / sw >= Wo) continue;
                acc += dyp[(th / sh) * Wo + tw / sw];
            }
        }
        dx[idx] = acc / (real)(kh * kw);
    }
}

// Depthwise convolution, weight (C*m, 1, kh, kw): output channel o reads input channel o / m.
extern "C" __global__ void depthwise_forward(const real* x, const real* weight, real* y, int N, int C,
                                             int H, int W, int m, int kh, int kw, int sh, int sw,
                                             int pt, int pl, int dh, int dw, int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * m * Ho * Wo) {
        const int ow = idx % Wo, oh = (idx / Wo) % Ho;
        const int o = (idx / ((long long)Ho * Wo)) % (C * m), n = idx / ((long long)C * m * Ho * Wo);
        const real* xp = x + ((long long)n * C + o / m) * H * W;
        const real* wp = weight + (long long)o * kh * kw;
        real acc = 0;
        for (int i = 0; i < kh; ++i) {
            const int h = oh * sh - pt + i * dh;
            if (h < 0 || h >= H) continue;
            for (int j = 0; j < kw; ++j) {
                const int w = ow * sw - pl + j * dw;
                if (w >= 0 && w < W) acc += xp[h * W + w] * wp[i * kw + j];
            }
        }
        y[idx] = acc;
    }
}

// dx: a gather over the m output channels and the taps that read pixel (n, c, h, w).
extern "C" __global__ void depthwise_backward_input(const real* dy, const real* weight, real* dx, int N,
                                                    int C, int H, int W, int m, int kh, int kw,
                                                    int sh, int sw, int pt, int pl, int dh,
                                                    int dw, int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * H * W) {
        const int w = idx % W, h = (idx / W) % H;
        const int c = (idx / ((long long)H * W)) % C, n = idx / ((long long)C * H * W);
        real acc = 0;
        for (int k = 0; k < m; ++k) {
            const int o = c * m + k;
            const real* dyp = dy + ((long long)n * C * m + o) * Ho * Wo;
            for (int i = 0; i < kh; ++i) {
                const int th = h + pt - i * dh;
                if (th < 0 || th % sh != 0 || th / sh >= Ho) continue;
                for (int j = 0; j < kw; ++j) {
                    const int tw = w + pl - j * dw;
                    if (tw < 0 || tw % sw != 0 || tw / sw >= Wo) continue;
                    acc += dyp[(th / sh) * Wo + tw / sw] * weight[((long long)o * kh + i) * kw + j];
                }
            }
        }
        dx[idx] = acc;
    }
}

// dweight partial sums, one thread per (n, o, i, j): out (N, C*m, kh, kw), summed over n
// afterwards. Keeps every thread's writes private without atomics or shared memory.
extern "C" __global__ void depthwise_backward_weight(const real* dy, const real* x, real* partial, int N,
                                                     int C, int H, int W, int m, int kh, int kw,
                                                     int sh, int sw, int pt, int pl, int dh,
                                                     int dw, int Ho, int Wo) {
    GRID_LOOP(idx, (long long)N * C * m * kh * kw) {
        const int j = idx % kw, i = (idx / kw) % kh;
        const int o = (idx / ((long long)kh * kw)) % (C * m), n = idx / ((long long)C * m * kh * kw);
        const real* xp = x + ((long long)n * C + o / m) * H * W;
        const real* dyp = dy + ((long long)n * C * m + o) * Ho * Wo;
        real acc = 0;
        for (int oh = 0; oh < Ho; ++oh) {
            const int h = oh * sh - pt + i * dh;
            if (h < 0 || h >= H) continue;
            for (int ow = 0; ow < Wo; ++ow) {
                const int w = ow * sw - pl + j * dw;
                if (w >= 0 && w < W) acc += dyp[oh * Wo + ow] * xp[h * W + w];
            }
        }
        partial[idx] = acc;
    }
}
