// Masked per-sequence sums of per-token quantities.
// Spec: [C-SEQ-LOGPROB]: out[b] = sum_t mask[b,t] * (a[b,t] - c[b,t]), with
// c absent (null) for sequence log-probs and c = reference log-probs for the
// sequence KL estimate. Accumulated in float64.
// One block per sequence of T tokens. Traffic: reads T*(8 or 12) bytes,
// writes 4 bytes per sequence.

#define SEQ_BLOCK 128

extern "C" __global__ void __launch_bounds__(SEQ_BLOCK)
masked_seq_sum(const float* __restrict__ a, const float* __restrict__ c,
               const float* __restrict__ mask, float* __restrict__ out, int t_len) {
    long long base = (long long)blockIdx.x * t_len;
    double acc = 0.0;
    for (int t = threadIdx.x; t < t_len; t += SEQ_BLOCK) {
        float m = mask[base + t];
        if (m != 0.0f) {
            double v = (double)a[base + t];
            if (c != nullptr) v -= (double)c[base + t];
            acc += (double)m * v;
        }
    }
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)acc;
}
