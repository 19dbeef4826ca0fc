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
//        V*b gradient, then reads and rewrites the target's entry (2b
//        bytes). No N x V intermediate exists in either direction.
// Neither loop branches per element: the forward takes each chunk's extremes
// first (ChunkStats) and measures all lanes of a warp from the warp's running
// maximum (chunk_add_warp), so that the lanes of a warp take the same path
// except where a lane's chunk holds that maximum; the backward treats the
// target's entry after the row.

#define TOKEN_BLOCK 256
// Eight blocks of 256 threads fill an SM (2048 threads) when a thread holds
// at most 32 registers; the forward asks the compiler for that bound.
#define TOKEN_BLOCKS_PER_SM 8

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

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK, TOKEN_BLOCKS_PER_SM)
token_logprob_fwd_f32(const float* __restrict__ logits, const long long* __restrict__ targets,
                      float* __restrict__ logp, float* __restrict__ lse, int v) {
    long long row = blockIdx.x;
    const float* x = logits + row * (long long)v;
    ChunkStats acc = {-P3O_INF, 0.0f, 0.0f};
    int head = head_len(x, 4, v);
    int v4 = (v - head) >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x + head);
    int i = threadIdx.x;
    // Four independent 16-byte loads in flight per thread, one chunk, while
    // every lane of the warp has all four (chunk_add_warp's condition): the
    // warp's last lane is i | 31, since i advances in multiples of 32.
    for (; (i | 31) + 3 * TOKEN_BLOCK < v4; i += 4 * TOKEN_BLOCK) {
        float4 q[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) q[k] = __ldg(x4 + i + k * TOKEN_BLOCK);
        float c[16];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            c[4 * k] = q[k].x;
            c[4 * k + 1] = q[k].y;
            c[4 * k + 2] = q[k].z;
            c[4 * k + 3] = q[k].w;
        }
        auto chunk = [&](int j) { return c[j]; };
        float hi, lo;
        chunk_extremes<16>(chunk, hi, lo);
        chunk_add_warp<16>(acc, chunk, hi, lo);
    }
    chunk_warp_merge(acc);
    for (; i < v4; i += TOKEN_BLOCK) {
        float4 q = __ldg(x4 + i);
        float c[4] = {q.x, q.y, q.z, q.w};
        chunk_add(acc, c);
    }
    RowStats stats = chunk_row_stats(acc);
    // The unaligned head and the tail: fewer than 8 elements in all.
    int rest = v - head - 4 * v4;
    if ((int)threadIdx.x < head) stats_add(stats, __ldg(x + threadIdx.x));
    if ((int)threadIdx.x < rest) stats_add(stats, __ldg(x + head + 4 * v4 + threadIdx.x));
    long long t = targets[row];
    // An out-of-range target is never read: its row gets logp = NaN.
    finish_row(stats, (t >= 0 && t < v) ? x[t] : P3O_NAN, row, logp, lse);
}

// The eight bf16 of a 16-byte word as float32, in memory order.
__device__ __forceinline__ void unpack_bf16x8(uint4 q, float* c) {
    unsigned int w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        c[2 * j] = __uint_as_float(w[j] << 16);
        c[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
}

extern "C" __global__ void __launch_bounds__(TOKEN_BLOCK, TOKEN_BLOCKS_PER_SM)
token_logprob_fwd_bf16(const p3o_bf16* __restrict__ logits, const long long* __restrict__ targets,
                       float* __restrict__ logp, float* __restrict__ lse, int v) {
    long long row = blockIdx.x;
    const p3o_bf16* x = logits + row * (long long)v;
    ChunkStats acc = {-P3O_INF, 0.0f, 0.0f};
    // Eight bf16 per 16-byte load, three loads in flight, one chunk of 24,
    // while every lane of the warp has all three (as in the float32 kernel;
    // a fourth load would not fit 32 registers).
    int head = head_len(x, 8, v);
    int v8 = (v - head) >> 3;
    const uint4* x8 = reinterpret_cast<const uint4*>(x + head);
    int i = threadIdx.x;
    for (; (i | 31) + 2 * TOKEN_BLOCK < v8; i += 3 * TOKEN_BLOCK) {
        uint4 q[3];
#pragma unroll
        for (int k = 0; k < 3; ++k) q[k] = __ldg(x8 + i + k * TOKEN_BLOCK);
        unsigned int w[12];
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            w[4 * k] = q[k].x;
            w[4 * k + 1] = q[k].y;
            w[4 * k + 2] = q[k].z;
            w[4 * k + 3] = q[k].w;
        }
        // The extremes on the packed pairs (one instruction per two
        // elements), so that no float32 copy of the chunk is kept: element
        // j, the (j % 2)-th bf16 of word j / 2, is unpacked when it is used.
        unsigned int hi2 = w[0], lo2 = w[0];
#pragma unroll
        for (int k = 1; k < 12; ++k) {
            hi2 = bf16x2_max(hi2, w[k]);
            lo2 = bf16x2_min(lo2, w[k]);
        }
        float hi = fmaxf(__uint_as_float(hi2 << 16), __uint_as_float(hi2 & 0xffff0000u));
        float lo = fminf(__uint_as_float(lo2 << 16), __uint_as_float(lo2 & 0xffff0000u));
        chunk_add_warp<24>(
            acc, [&](int j) { return __uint_as_float((j & 1) ? (w[j >> 1] & 0xffff0000u) : (w[j >> 1] << 16)); },
            hi, lo);
    }
    chunk_warp_merge(acc);
    for (; i < v8; i += TOKEN_BLOCK) {
        float c[8];
        unpack_bf16x8(__ldg(x8 + i), c);
        chunk_add(acc, c);
    }
    RowStats stats = chunk_row_stats(acc);
    int rest = v - head - 8 * v8;
    if ((int)threadIdx.x < head) stats_add(stats, bf16_to_f32(x[threadIdx.x]));
    if ((int)threadIdx.x < rest) stats_add(stats, bf16_to_f32(x[head + 8 * v8 + threadIdx.x]));
    long long t = targets[row];
    finish_row(stats, (t >= 0 && t < v) ? bf16_to_f32(x[t]) : P3O_NAN, row, logp, lse);
}

// ---- backward --------------------------------------------------------------

// Every entry of a row is first written as if it were not the target's,
// -g exp(x - lse) with lse = hi + lo, computed as 2^((x - hi) log2 e - lo log2 e):
// x - hi is exact whenever x is within a factor 2 of hi (Sterbenz), which
// covers every x whose softmax float32 can hold, and entries below float32's
// normal range are flushed to zero (within the bound of [C-TOKEN-LOGPROB]).
// The row's target entry is then rewritten by one thread as
// g (1 - p_t) = -g expm1(x_t - lse), without cancellation.
__device__ __forceinline__ float other_grad(float x, float neg_g, float hi, float lo_log2e) {
    return neg_g * exp2_ftz(fmaf(x - hi, P3O_LOG2E, -lo_log2e));
}

__device__ __forceinline__ float target_grad(float x, float g, float hi, float lo) {
    return -g * expm1f((x - hi) - lo);
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
    float neg_g = -g;
    float lo_log2e = lo * P3O_LOG2E;
    // Vector accesses need the input and output rows equally misaligned.
    bool vec = (((unsigned long long)x ^ (unsigned long long)out) & 15) == 0;
    int head = vec ? head_len(x, 4, v) : v;
    int v4 = (v - head) >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x + head);
    float4* o4 = reinterpret_cast<float4*>(out + head);
    for (int i = threadIdx.x; i < v4; i += TOKEN_BLOCK) {
        float4 q = __ldg(x4 + i);
        float4 r;
        r.x = other_grad(q.x, neg_g, hi, lo_log2e);
        r.y = other_grad(q.y, neg_g, hi, lo_log2e);
        r.z = other_grad(q.z, neg_g, hi, lo_log2e);
        r.w = other_grad(q.w, neg_g, hi, lo_log2e);
        o4[i] = r;
    }
    // Head (all of the row when not vectorised) and tail.
    for (int i = threadIdx.x; i < head; i += TOKEN_BLOCK) out[i] = other_grad(__ldg(x + i), neg_g, hi, lo_log2e);
    for (int i = head + 4 * v4 + threadIdx.x; i < v; i += TOKEN_BLOCK) {
        out[i] = other_grad(__ldg(x + i), neg_g, hi, lo_log2e);
    }
    __syncthreads();  // the block's stores to the row come before the rewrite
    long long t = targets[row];
    if (threadIdx.x == 0 && t >= 0 && t < v) out[t] = target_grad(x[t], g, hi, lo);
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
    float neg_g = -g;
    float lo_log2e = lo * P3O_LOG2E;
    bool vec = (((unsigned long long)x ^ (unsigned long long)out) & 15) == 0;
    int head = vec ? head_len(x, 8, v) : v;
    int v8 = (v - head) >> 3;
    const uint4* x8 = reinterpret_cast<const uint4*>(x + head);
    uint4* o8 = reinterpret_cast<uint4*>(out + head);
    for (int i = threadIdx.x; i < v8; i += TOKEN_BLOCK) {
        float c[8];
        unpack_bf16x8(__ldg(x8 + i), c);
        unsigned int r[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            r[j] = pack_bf16x2(other_grad(c[2 * j], neg_g, hi, lo_log2e),
                               other_grad(c[2 * j + 1], neg_g, hi, lo_log2e));
        }
        o8[i] = make_uint4(r[0], r[1], r[2], r[3]);
    }
    for (int i = threadIdx.x; i < head; i += TOKEN_BLOCK) {
        out[i] = f32_to_bf16(other_grad(bf16_to_f32(x[i]), neg_g, hi, lo_log2e));
    }
    for (int i = head + 8 * v8 + threadIdx.x; i < v; i += TOKEN_BLOCK) {
        out[i] = f32_to_bf16(other_grad(bf16_to_f32(x[i]), neg_g, hi, lo_log2e));
    }
    __syncthreads();  // the block's stores to the row come before the rewrite
    long long t = targets[row];
    if (threadIdx.x == 0 && t >= 0 && t < v) out[t] = f32_to_bf16(target_grad(bf16_to_f32(x[t]), g, hi, lo));
}
