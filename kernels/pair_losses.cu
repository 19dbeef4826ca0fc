// Per-pair losses of P3O-V1, P3O-V2 and online DPO with their gradients with
// respect to the sequence log-probs lp1 = log pi(y1|x) and lp2 = log pi(y2|x).
// Spec: [C-SHAPED-REWARD], [C-CLIP], [C-P3O-V1], [C-P3O-V2], [C-DPO]. The
// behaviour and reference log-probs are constants (their gradient is zero by
// [C-SURROGATE]), so only d/dlp1 and d/dlp2 are written.
// Inputs are the six sequence log-probs (float32) and two rewards (float64);
// arithmetic is float64, as in the reference. One thread per pair. Traffic per
// pair: reads 6*4 + 2*8 bytes, writes 3*4 bytes.

#define PAIR_BLOCK 256

struct PairIn {
    double lp[2], lp_old[2], lp_ref[2], r[2];
};

__device__ __forceinline__ PairIn load_pair(int i, const float* lp1, const float* lp2,
                                            const float* old1, const float* old2,
                                            const float* ref1, const float* ref2,
                                            const double* r1, const double* r2) {
    PairIn p;
    p.lp[0] = lp1[i];
    p.lp[1] = lp2[i];
    p.lp_old[0] = old1[i];
    p.lp_old[1] = old2[i];
    p.lp_ref[0] = ref1[i];
    p.lp_ref[1] = ref2[i];
    p.r[0] = r1[i];
    p.r[1] = r2[i];
    return p;
}

// [C-SHAPED-REWARD] difference D = r~1 - r~2.
__device__ __forceinline__ double shaped_difference(const PairIn& p, double beta) {
    double s1 = p.r[0] - beta * (p.lp_old[0] - p.lp_ref[0]);
    double s2 = p.r[1] - beta * (p.lp_old[1] - p.lp_ref[1]);
    return s1 - s2;
}

// [C-CLIP]: value of min(A q, A clip(q, lo, hi)); *passes is false exactly
// where clipping zeroes the gradient.
__device__ __forceinline__ double clipped_objective(double a, double q, double lo, double hi, bool* passes) {
    double c = fmin(fmax(q, lo), hi);
    *passes = !((a > 0.0 && q > hi) || (a < 0.0 && q < lo));
    return fmin(a * q, a * c);
}

#define PAIR_ARGS                                                                                 \
    const float *__restrict__ lp1, const float *__restrict__ lp2, const float *__restrict__ old1,  \
        const float *__restrict__ old2, const float *__restrict__ ref1,                            \
        const float *__restrict__ ref2, const double *__restrict__ r1,                             \
        const double *__restrict__ r2, double beta, double eps, float *__restrict__ loss,          \
        float *__restrict__ g1, float *__restrict__ g2, int n

extern "C" __global__ void __launch_bounds__(PAIR_BLOCK) pair_loss_p3o_v1(PAIR_ARGS) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    PairIn p = load_pair(i, lp1, lp2, old1, old2, ref1, ref2, r1, r2);
    double d = shaped_difference(p, beta);
    double rho[2] = {exp(p.lp[0] - p.lp_old[0]), exp(p.lp[1] - p.lp_old[1])};
    double w[2] = {d * rho[1], -d * rho[0]};
    double total = 0.0, g[2] = {0.0, 0.0};
    for (int k = 0; k < 2; ++k) {
        bool passes;
        total -= clipped_objective(w[k], rho[k], 1.0 - eps, 1.0 + eps, &passes) / 2.0;
        if (passes) g[k] = -w[k] * rho[k] / 2.0;
    }
    loss[i] = (float)total;
    g1[i] = (float)g[0];
    g2[i] = (float)g[1];
}

extern "C" __global__ void __launch_bounds__(PAIR_BLOCK) pair_loss_p3o_v2(PAIR_ARGS) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    PairIn p = load_pair(i, lp1, lp2, old1, old2, ref1, ref2, r1, r2);
    double a = shaped_difference(p, beta) * exp(p.lp[0] - p.lp_old[0]) * exp(p.lp[1] - p.lp_old[1]);
    double l = p.lp[0] - p.lp[1];
    double l_old = p.lp_old[0] - p.lp_old[1];
    bool passes;
    double value = clipped_objective(a, l, l_old - eps, l_old + eps, &passes);
    double g = passes ? a : 0.0;
    loss[i] = (float)(-value);
    g1[i] = (float)(-g);
    g2[i] = (float)g;
}

__device__ __forceinline__ double sigmoid_f64(double u) {
    if (u >= 0.0) return 1.0 / (1.0 + exp(-u));
    double e = exp(u);
    return e / (1.0 + e);
}

__device__ __forceinline__ double log_sigmoid_f64(double u) {
    // -softplus(-u)
    double v = -u;
    return v > 0.0 ? -(v + log1p(exp(-v))) : -log1p(exp(v));
}

// [C-DPO]; eps is unused.
extern "C" __global__ void __launch_bounds__(PAIR_BLOCK) pair_loss_dpo(PAIR_ARGS) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    PairIn p = load_pair(i, lp1, lp2, old1, old2, ref1, ref2, r1, r2);
    double s = sigmoid_f64(p.r[0] - p.r[1]);
    double u = beta * ((p.lp[0] - p.lp_ref[0]) - (p.lp[1] - p.lp_ref[1]));
    double value = -(s * log_sigmoid_f64(u) + (1.0 - s) * log_sigmoid_f64(-u));
    double g = beta * (sigmoid_f64(u) - s);
    loss[i] = (float)value;
    g1[i] = (float)g;
    g2[i] = (float)(-g);
}
