// Log-probability of sampled tokens under a logits matrix, and its backward.
// Spec: [C-TOKEN-LOGPROB]. logp[n] = x[n, t_n] - lse[n] with
// lse[n] = log sum_v exp(x[n, v]); d logp[n] / d x[n, v] = [v = t_n] - softmax.
//
// One block per row, TOKEN_BLOCK threads, 16-byte loads when the row length
// allows. Memory traffic per row of V elements of size b:
//   fwd: reads V*b (one pass, online softmax) + 8 bytes of target, writes 12
//        bytes (logp float32, lse float64);
//   bwd: reads V*b logits + 20 bytes (target, lse, upstream gradient), writes
//        V*b gradient. No N x V intermediate exists in either direction.
// lse is kept in float64: with logits near 1e4 a float32 lse would be off by
// up to half an ulp (5e-4), and so would every softmax value rebuilt from it.

#define TOKEN_BLOCK 256

// ---- forward ---------------------------------------------------------------

__device__ __forceinline__ void finish_row(RowStats acc, float target_logit, long long row,
                                           float* __restrict__ logp, double* __restrict__ lse) {
    acc = stats_block_reduce(acc);
    if (threadIdx.x == 0) {
        double l = (double)acc.m + log((double)acc.s);
        lse[row] = l;
        logp[row] = (float)((double)target_logit - l);
    }
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_fwd_f32(const float* __restrict__ logits, const long long* __restrict__ targets,
                      float* __restrict__ logp, double* __restrict__ lse, int v) {
    long long row = blockIdx.x;
    const float* x = logits + row * (long long)v;
    RowStats acc = {-P3O_INF, 0.0f};
    if ((v & 3) == 0) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        int v4 = v >> 2;
        int i = threadIdx.x;
        // Four independent 16-byte loads in flight per thread.
        for (; i + 3 * TOKEN_BLOCK < v4; i += 4 * TOKEN_BLOCK) {
            float4 q[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) q[k] = __ldg(x4 + i + k * TOKEN_BLOCK);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                stats_add(acc, q[k].x);
                stats_add(acc, q[k].y);
                stats_add(acc, q[k].z);
                stats_add(acc, q[k].w);
            }
        }
        for (; i < v4; i += TOKEN_BLOCK) {
            float4 q = __ldg(x4 + i);
            stats_add(acc, q.x);
            stats_add(acc, q.y);
            stats_add(acc, q.z);
            stats_add(acc, q.w);
        }
    } else {
        for (int i = threadIdx.x; i < v; i += TOKEN_BLOCK) stats_add(acc, __ldg(x + i));
    }
    long long t = targets[row];
    // An out-of-range target is never read: its row gets logp = NaN.
    finish_row(acc, (t >= 0 && t < v) ? x[t] : P3O_NAN, row, logp, lse);
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_fwd_bf16(const p3o_bf16* __restrict__ logits, const long long* __restrict__ targets,
                       float* __restrict__ logp, double* __restrict__ lse, int v) {
    long long row = blockIdx.x;
    const p3o_bf16* x = logits + row * (long long)v;
    RowStats acc = {-P3O_INF, 0.0f};
    if ((v & 7) == 0) {
        // Eight bf16 per 16-byte load.
        const uint4* x8 = reinterpret_cast<const uint4*>(x);
        int v8 = v >> 3;
        int i = threadIdx.x;
        for (; i + TOKEN_BLOCK < v8; i += 2 * TOKEN_BLOCK) {
            uint4 q[2];
            q[0] = __ldg(x8 + i);
            q[1] = __ldg(x8 + i + TOKEN_BLOCK);
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                unsigned int w[4] = {q[k].x, q[k].y, q[k].z, q[k].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    stats_add(acc, __uint_as_float(w[j] << 16));
                    stats_add(acc, __uint_as_float(w[j] & 0xffff0000u));
                }
            }
        }
        for (; i < v8; i += TOKEN_BLOCK) {
            uint4 q = __ldg(x8 + i);
            unsigned int w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                stats_add(acc, __uint_as_float(w[j] << 16));
                stats_add(acc, __uint_as_float(w[j] & 0xffff0000u));
            }
        }
    } else {
        for (int i = threadIdx.x; i < v; i += TOKEN_BLOCK) stats_add(acc, bf16_to_f32(x[i]));
    }
    long long t = targets[row];
    finish_row(acc, (t >= 0 && t < v) ? bf16_to_f32(x[t]) : P3O_NAN, row, logp, lse);
}

// ---- backward --------------------------------------------------------------

// x - lse is formed in float64 (exact for float32 x), then exponentiated in
// float32.
__device__ __forceinline__ float token_grad(float x, float g, double l, bool is_target) {
    float d = (float)((double)x - l);
    return g * ((is_target ? 1.0f : 0.0f) - exp2f(d * P3O_LOG2E));
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_bwd_f32(const float* __restrict__ logits, const long long* __restrict__ targets,
                      const double* __restrict__ lse, const float* __restrict__ grad_logp,
                      float* __restrict__ grad_logits, int v) {
    long long row = blockIdx.x;
    const float* x = logits + row * (long long)v;
    float* out = grad_logits + row * (long long)v;
    float g = grad_logp[row];
    double l = lse[row];
    long long t = targets[row];
    if ((v & 3) == 0) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* o4 = reinterpret_cast<float4*>(out);
        int v4 = v >> 2;
        for (int i = threadIdx.x; i < v4; i += TOKEN_BLOCK) {
            float4 q = __ldg(x4 + i);
            int b = 4 * i;
            float4 r;
            r.x = token_grad(q.x, g, l, b == t);
            r.y = token_grad(q.y, g, l, b + 1 == t);
            r.z = token_grad(q.z, g, l, b + 2 == t);
            r.w = token_grad(q.w, g, l, b + 3 == t);
            o4[i] = r;
        }
    } else {
        for (int i = threadIdx.x; i < v; i += TOKEN_BLOCK) out[i] = token_grad(__ldg(x + i), g, l, i == t);
    }
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_bwd_bf16(const p3o_bf16* __restrict__ logits, const long long* __restrict__ targets,
                       const double* __restrict__ lse, const float* __restrict__ grad_logp,
                       p3o_bf16* __restrict__ grad_logits, int v) {
    long long row = blockIdx.x;
    const p3o_bf16* x = logits + row * (long long)v;
    p3o_bf16* out = grad_logits + row * (long long)v;
    float g = grad_logp[row];
    double l = lse[row];
    long long t = targets[row];
    if ((v & 7) == 0) {
        const uint4* x8 = reinterpret_cast<const uint4*>(x);
        uint4* o8 = reinterpret_cast<uint4*>(out);
        int v8 = v >> 3;
        for (int i = threadIdx.x; i < v8; i += TOKEN_BLOCK) {
            uint4 q = __ldg(x8 + i);
            unsigned int w[4] = {q.x, q.y, q.z, q.w};
            unsigned int r[4];
            int b = 8 * i;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float lo = token_grad(__uint_as_float(w[j] << 16), g, l, b + 2 * j == t);
                float hi = token_grad(__uint_as_float(w[j] & 0xffff0000u), g, l, b + 2 * j + 1 == t);
                r[j] = (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
            }
            o8[i] = make_uint4(r[0], r[1], r[2], r[3]);
        }
    } else {
        for (int i = threadIdx.x; i < v; i += TOKEN_BLOCK) {
            out[i] = f32_to_bf16(token_grad(bf16_to_f32(x[i]), g, l, i == t));
        }
    }
}
