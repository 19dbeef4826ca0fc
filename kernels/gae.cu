// Generalised advantage estimation for PPO, a reverse scan per sequence.
// Spec: [C-GAE]: with m[T] = 0 and A[T] = 0, for t = T-1 .. 0,
//   delta_t = r_t + gamma * m[t+1] * V[t+1] - V[t]
//   A_t     = m[t] * (delta_t + gamma * lambda * A_{t+1})
//   R_t     = m[t] * (A_t + V[t])      (the value target)
// One thread per sequence, float64 accumulation. Traffic: reads 3*4 bytes and
// writes 2*4 bytes per token; rows are read with a stride of T (responses are
// short next to the logits traffic, so the scan is not on the critical path).

#define GAE_BLOCK 128

extern "C" __global__ void __launch_bounds__(GAE_BLOCK)
gae_reverse_scan(const float* __restrict__ rewards, const float* __restrict__ values,
                 const float* __restrict__ mask, float* __restrict__ adv,
                 float* __restrict__ ret, double gamma, double lambda, int batch, int t_len) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    long long base = (long long)b * t_len;
    double next_a = 0.0, next_v = 0.0, next_m = 0.0;
    for (int t = t_len - 1; t >= 0; --t) {
        double m = mask[base + t];
        double v = values[base + t];
        double delta = (double)rewards[base + t] + gamma * next_m * next_v - v;
        double a = m * (delta + gamma * lambda * next_a);
        adv[base + t] = (float)a;
        ret[base + t] = (float)(m * (a + v));
        next_a = a;
        next_v = v;
        next_m = m;
    }
}
