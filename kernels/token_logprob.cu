// Log-probability of sampled tokens under a logits matrix, and its backward.
// Spec: [C-TOKEN-LOGPROB]. logp[n] = x[n, t_n] - lse[n] with
// lse[n] = log sum_v exp(x[n, v]); d logp[n] / d x[n, v] = [v = t_n] - softmax.
// lse is stored as two float32 per row, lse = hi + lo with hi the row maximum
// and lo = log1p(rest) (see RowStats), so that x - lse is exact to float32
// rounding for every x near the maximum, and 1 - softmax(target) is formed as
// -expm1(x_t - lse) without cancellation.
//
// One block per row, TOKEN_BLOCK threads, 16-byte loads when the row length
// allows. Memory traffic per row of V elements of size b:
//   fwd: reads V*b (one pass, online softmax) + 8 bytes of target, writes 12
//        bytes (logp, lse hi and lo);
//   bwd: reads V*b logits + 20 bytes (target, lse, upstream gradient), writes
//        V*b gradient. No N x V intermediate exists in either direction.

#define TOKEN_BLOCK 256

// ---- forward ---------------------------------------------------------------

__device__ __forceinline__ void finish_row(RowStats acc, float target_logit, long long row,
                                           float* __restrict__ logp, float* __restrict__ lse) {
    acc = stats_block_reduce(acc);
    if (threadIdx.x == 0) {
        float lo = log1pf(acc.s);
        lse[2 * row] = acc.m;
        lse[2 * row + 1] = lo;
        logp[row] = (target_logit - acc.m) - lo;
    }
}

// Elements before the first 16-byte boundary of a row (rows of odd length
// start at any 4- or 2-byte offset); `per` elements make 16 bytes.
__device__ __forceinline__ int head_len(const void* p, int per, int v) {
    int bytes = (int)((16 - ((unsigned long long)p & 15)) & 15);
    int h = bytes / (16 / per);
    return h < v ? h : v;
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_fwd_f32(const float* __restrict__ logits, const long long* __restrict__ targets,
                      float* __restrict__ logp, float* __restrict__ lse, int v) {
    long long row = blockIdx.x;
    const float* x = logits + row * (long long)v;
    RowStats acc = {-P3O_INF, 0.0f};
    int head = head_len(x, 4, v);
    int v4 = (v - head) >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x + head);
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
    // The unaligned head and the tail: fewer than 8 elements in all.
    int rest = v - head - 4 * v4;
    if ((int)threadIdx.x < head) stats_add(acc, __ldg(x + threadIdx.x));
    if ((int)threadIdx.x < rest) stats_add(acc, __ldg(x + head + 4 * v4 + threadIdx.x));
    long long t = targets[row];
    // An out-of-range target is never read: its row gets logp = NaN.
    finish_row(acc, (t >= 0 && t < v) ? x[t] : P3O_NAN, row, logp, lse);
}

__device__ __forceinline__ void stats_add_bf16x8(RowStats& acc, uint4 q) {
    unsigned int w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        stats_add(acc, __uint_as_float(w[j] << 16));
        stats_add(acc, __uint_as_float(w[j] & 0xffff0000u));
    }
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_fwd_bf16(const p3o_bf16* __restrict__ logits, const long long* __restrict__ targets,
                       float* __restrict__ logp, float* __restrict__ lse, int v) {
    long long row = blockIdx.x;
    const p3o_bf16* x = logits + row * (long long)v;
    RowStats acc = {-P3O_INF, 0.0f};
    // Eight bf16 per 16-byte load, four loads in flight.
    int head = head_len(x, 8, v);
    int v8 = (v - head) >> 3;
    const uint4* x8 = reinterpret_cast<const uint4*>(x + head);
    int i = threadIdx.x;
    for (; i + 3 * TOKEN_BLOCK < v8; i += 4 * TOKEN_BLOCK) {
        uint4 q[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) q[k] = __ldg(x8 + i + k * TOKEN_BLOCK);
#pragma unroll
        for (int k = 0; k < 4; ++k) stats_add_bf16x8(acc, q[k]);
    }
    for (; i < v8; i += TOKEN_BLOCK) stats_add_bf16x8(acc, __ldg(x8 + i));
    int rest = v - head - 8 * v8;
    if ((int)threadIdx.x < head) stats_add(acc, bf16_to_f32(x[threadIdx.x]));
    if ((int)threadIdx.x < rest) stats_add(acc, bf16_to_f32(x[head + 8 * v8 + threadIdx.x]));
    long long t = targets[row];
    finish_row(acc, (t >= 0 && t < v) ? bf16_to_f32(x[t]) : P3O_NAN, row, logp, lse);
}

// ---- backward --------------------------------------------------------------

// g ([target] - exp(x - lse)) with lse = hi + lo: x - hi is exact whenever x
// is within a factor 2 of hi (Sterbenz), which covers every x whose softmax
// value float32 can hold; the target's 1 - p is -expm1(x - lse).
__device__ __forceinline__ float token_grad(float x, float g, float hi, float lo, bool is_target) {
    float d = (x - hi) - lo;
    return is_target ? -g * expm1f(d) : -g * exp2f(d * P3O_LOG2E);
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_bwd_f32(const float* __restrict__ logits, const long long* __restrict__ targets,
                      const float* __restrict__ lse, const float* __restrict__ grad_logp,
                      float* __restrict__ grad_logits, int v) {
    long long row = blockIdx.x;
    const float* x = logits + row * (long long)v;
    float* out = grad_logits + row * (long long)v;
    float g = grad_logp[row];
    float hi = lse[2 * row];
    float lo = lse[2 * row + 1];
    long long t = targets[row];
    // Vector accesses need the input and output rows equally misaligned.
    bool vec = (((unsigned long long)x ^ (unsigned long long)out) & 15) == 0;
    int head = vec ? head_len(x, 4, v) : v;
    int v4 = (v - head) >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x + head);
    float4* o4 = reinterpret_cast<float4*>(out + head);
    for (int i = threadIdx.x; i < v4; i += TOKEN_BLOCK) {
        float4 q = __ldg(x4 + i);
        long long b = head + 4LL * i;
        float4 r;
        r.x = token_grad(q.x, g, hi, lo, b == t);
        r.y = token_grad(q.y, g, hi, lo, b + 1 == t);
        r.z = token_grad(q.z, g, hi, lo, b + 2 == t);
        r.w = token_grad(q.w, g, hi, lo, b + 3 == t);
        o4[i] = r;
    }
    // Head (all of the row when not vectorised) and tail.
    for (int i = threadIdx.x; i < head; i += TOKEN_BLOCK) out[i] = token_grad(__ldg(x + i), g, hi, lo, i == t);
    for (int i = head + 4 * v4 + threadIdx.x; i < v; i += TOKEN_BLOCK) {
        out[i] = token_grad(__ldg(x + i), g, hi, lo, i == t);
    }
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK)
token_logprob_bwd_bf16(const p3o_bf16* __restrict__ logits, const long long* __restrict__ targets,
                       const float* __restrict__ lse, const float* __restrict__ grad_logp,
                       p3o_bf16* __restrict__ grad_logits, int v) {
    long long row = blockIdx.x;
    const p3o_bf16* x = logits + row * (long long)v;
    p3o_bf16* out = grad_logits + row * (long long)v;
    float g = grad_logp[row];
    float hi = lse[2 * row];
    float lo = lse[2 * row + 1];
    long long t = targets[row];
    bool vec = (((unsigned long long)x ^ (unsigned long long)out) & 15) == 0;
    int head = vec ? head_len(x, 8, v) : v;
    int v8 = (v - head) >> 3;
    const uint4* x8 = reinterpret_cast<const uint4*>(x + head);
    uint4* o8 = reinterpret_cast<uint4*>(out + head);
    for (int i = threadIdx.x; i < v8; i += TOKEN_BLOCK) {
        uint4 q = __ldg(x8 + i);
        unsigned int w[4] = {q.x, q.y, q.z, q.w};
        unsigned int r[4];
        long long b = head + 8LL * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            float lo_v = token_grad(__uint_as_float(w[j] << 16), g, hi, lo, b + 2 * j == t);
            float hi_v = token_grad(__uint_as_float(w[j] & 0xffff0000u), g, hi, lo, b + 2 * j + 1 == t);
            r[j] = (unsigned int)f32_to_bf16(lo_v) | ((unsigned int)f32_to_bf16(hi_v) << 16);
        }
        o8[i] = make_uint4(r[0], r[1], r[2], r[3]);
    }
    for (int i = threadIdx.x; i < head; i += TOKEN_BLOCK) {
        out[i] = f32_to_bf16(token_grad(bf16_to_f32(x[i]), g, hi, lo, i == t));
    }
    for (int i = head + 8 * v8 + threadIdx.x; i < v; i += TOKEN_BLOCK) {
        out[i] = f32_to_bf16(token_grad(bf16_to_f32(x[i]), g, hi, lo, i == t));
    }
}
