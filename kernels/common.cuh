// Shared device helpers of the p3o kernels. NVRTC compiles every kernel file
// with this header prepended (see src/cuda/nvrtc.rs), so no include paths or
// CUDA headers are needed: bf16 is handled as raw 16-bit words.
#define P3O_INF __int_as_float(0x7f800000)
#define P3O_NAN __int_as_float(0x7fffffff)

#define P3O_LOG2E 1.4426950408889634f

typedef unsigned short p3o_bf16;  // the upper 16 bits of an IEEE float32

__device__ __forceinline__ float bf16_to_f32(p3o_bf16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// float32 -> bf16, round to nearest even; a NaN stays a NaN.
__device__ __forceinline__ p3o_bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (p3o_bf16)0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (p3o_bf16)(u >> 16);
}

// Two instructions with no portable C++ spelling. The device runs the PTX
// instruction; the host execution (kernels/host/simt.h) computes the same
// function in C++.
#ifdef __CUDA_ARCH__
// 2^x, with results below float32's normal range (2^-126) flushed to zero:
// one MUFU.EX2, where exp2f adds three instructions to produce subnormals.
__device__ __forceinline__ float exp2_ftz(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// Two float32 rounded to bf16 (nearest even) and packed into one word, `lo`
// in the low half: one instruction (sm_80 and later).
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The larger (smaller) of each half of two words of two bf16, as fmaxf
// (fminf) of their float32 values: a NaN half loses to a number, subnormals
// are kept. One instruction per pair of elements (sm_80 and later; ptxas
// fuses two of them into one three-input VHMNMX on sm_90).
__device__ __forceinline__ unsigned int bf16x2_max(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("max.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ unsigned int bf16x2_min(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("min.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
#else
// Each half as a float32 through fmaxf or fminf, returned as the bits of
// the input it picked (a canonical NaN if both are NaN).
template <class Pick>
inline unsigned int bf16x2_pick(unsigned int a, unsigned int b, Pick pick) {
    unsigned int r = 0;
    for (int s = 0; s < 32; s += 16) {
        unsigned int ha = (a >> s) & 0xffffu, hb = (b >> s) & 0xffffu;
        float fa = __uint_as_float(ha << 16), fb = __uint_as_float(hb << 16);
        float f = pick(fa, fb);
        unsigned int h = f != f ? 0x7fffu : f == fa && fa == fa ? ha : hb;
        r |= h << s;
    }
    return r;
}

inline unsigned int bf16x2_max(unsigned int a, unsigned int b) {
    return bf16x2_pick(a, b, [](float x, float y) { return fmaxf(x, y); });
}

inline unsigned int bf16x2_min(unsigned int a, unsigned int b) {
    return bf16x2_pick(a, b, [](float x, float y) { return fminf(x, y); });
}

inline float exp2_ftz(float x) {
    float r = exp2f(x);
    return r < 1.17549435e-38f ? 0.0f : r;  // NaN passes through
}

inline unsigned int pack_bf16x2(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
}
#endif

// Running statistics of an online softmax: the maximum m and the sum of
// exp(x - m) over every element except one copy of the maximum (whose term is
// exactly 1). Keeping that 1 out of the float32 sum keeps 1 - softmax(max)
// = rest / (1 + rest) exact even when it is far below float32's epsilon.
struct RowStats {
    float m;
    float s;
};

// A masked logit (-inf) adds nothing; it is skipped because, before the
// first finite element, x - m would be -inf - (-inf) = NaN.
__device__ __forceinline__ void stats_add(RowStats& a, float x) {
    if (x > a.m) {
        a.s = (a.s + 1.0f) * exp2f((a.m - x) * P3O_LOG2E);  // 0 for the first element
        a.m = x;
    } else if (x != -P3O_INF) {
        a.s += exp2f((x - a.m) * P3O_LOG2E);
    }
}

// The online softmax of one thread over whole chunks of its elements (the
// vector body of token_logprob_fwd): the maximum m, the sum of exp(x - m)
// over the elements below m, and the number of elements equal to m (one
// copy of the maximum stays out of the sum, as in RowStats). Each chunk's
// extremes are taken first, so that the common chunk (none of its elements
// is the maximum so far, every term is in float32's normal range) costs a
// subtraction, a multiplication, an exp2 and an add per element, without
// branches.
struct ChunkStats {
    float m;
    float rest;
    float ties;
};

// A chunk is read through `x(j)`, j in [0, K): an array's elements, or
// bf16 unpacked from the loaded words as they are needed (so that the
// chunk's float32 copies need no registers of their own).
template <int K, class Chunk>
__device__ __forceinline__ void chunk_extremes(const Chunk& x, float& hi, float& lo) {
    hi = x(0);
    lo = x(0);
#pragma unroll
    for (int j = 1; j < K; ++j) {
        hi = fmaxf(hi, x(j));
        lo = fminf(lo, x(j));
    }
}

// Raises the running maximum to `top` if `top` is larger, rescaling the sum.
__device__ __forceinline__ void chunk_rescale(ChunkStats& a, float top) {
    if (top > a.m) {
        a.rest = (a.rest + a.ties) * exp2f((a.m - top) * P3O_LOG2E);  // 0 for the first
        a.ties = 0.0f;
        a.m = top;
    }
}

// Adds a chunk whose extremes are `hi` and `lo`, none of it above a.m.
template <int K, class Chunk>
__device__ __forceinline__ void chunk_terms(ChunkStats& a, const Chunk& x, float hi, float lo) {
    // While every element so far is -inf, measure from 0: x - base is then
    // -inf (adding nothing) instead of -inf - (-inf) = NaN.
    float base = a.m == -P3O_INF ? 0.0f : a.m;
    if (hi == a.m || (lo - base) * P3O_LOG2E < -125.0f) {
        // Ties with the maximum, or terms that may fall below 2^-126.
#pragma unroll
        for (int j = 0; j < K; ++j) {
            bool tie = x(j) == base;
            float e = exp2f((x(j) - base) * P3O_LOG2E);
            a.rest += tie ? 0.0f : e;
            a.ties += tie ? 1.0f : 0.0f;
        }
    } else {
#pragma unroll
        for (int j = 0; j < K; ++j) a.rest += exp2_ftz((x(j) - base) * P3O_LOG2E);
    }
}

// One thread's chunk of K floats, measured against the thread's own running
// maximum.
template <int K>
__device__ __forceinline__ void chunk_add(ChunkStats& a, const float (&c)[K]) {
    auto x = [&](int j) { return c[j]; };
    float hi, lo;
    chunk_extremes<K>(x, hi, lo);
    chunk_rescale(a, hi);
    chunk_terms<K>(a, x, hi, lo);
}

// The maximum of v over the 32 lanes of a warp, in every lane (fmaxf: a NaN
// lane counts only if every lane is NaN).
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One chunk per lane of a whole warp, every lane's running maximum raised to
// the warp's: a.m stays the same in every lane (if it was), so the rescale
// branch is taken by all lanes or none, and only a lane whose chunk holds
// the maximum itself takes the exact path. With each thread's own maximum
// (chunk_add), a thread's k-th chunk sets a new maximum with probability
// about 1/k, so some lane of a warp takes the exact path in almost every
// early iteration, and the warp runs both paths. Every lane must call it.
// `hi` and `lo` are the lane's chunk extremes (chunk_extremes, or their
// bf16 form in token_logprob_fwd_bf16).
template <int K, class Chunk>
__device__ __forceinline__ void chunk_add_warp(ChunkStats& a, const Chunk& x, float hi, float lo) {
    chunk_rescale(a, warp_max(hi));
    chunk_terms<K>(a, x, hi, lo);
}

// Ends a run of chunk_add_warp: every lane's a.m is the warp's, which only
// some lanes hold, so each lane's stats alone break RowStats' rule (one copy
// of the maximum outside the sum). The lanes' sums and tie counts add; lane 0
// keeps the warp's stats and the other lanes start again empty. Every lane
// must call it.
__device__ __forceinline__ void chunk_warp_merge(ChunkStats& a) {
    for (int o = 16; o > 0; o >>= 1) {
        a.rest += __shfl_xor_sync(0xffffffffu, a.rest, o);
        a.ties += __shfl_xor_sync(0xffffffffu, a.ties, o);
    }
    if ((threadIdx.x & 31) != 0) a = ChunkStats{-P3O_INF, 0.0f, 0.0f};
}

// The RowStats of a thread's chunks: every tie but one joins the sum.
__device__ __forceinline__ RowStats chunk_row_stats(ChunkStats a) {
    RowStats r;
    r.m = a.m;
    r.s = a.rest + fmaxf(a.ties - 1.0f, 0.0f);
    return r;
}

__device__ __forceinline__ RowStats stats_merge(RowStats a, RowStats b) {
    RowStats hi = a.m >= b.m ? a : b;
    RowStats lo = a.m >= b.m ? b : a;
    if (lo.m == -P3O_INF) return hi;  // lo is empty
    hi.s += (lo.s + 1.0f) * exp2f((lo.m - hi.m) * P3O_LOG2E);
    return hi;
}

// Merges the stats of every thread of the block; all threads get the result.
// blockDim.x must be a multiple of 32 and at most 1024.
__device__ RowStats stats_block_reduce(RowStats v) {
    __shared__ float sh_m[32];
    __shared__ float sh_s[32];
    for (int o = 16; o > 0; o >>= 1) {
        RowStats w;
        w.m = __shfl_xor_sync(0xffffffffu, v.m, o);
        w.s = __shfl_xor_sync(0xffffffffu, v.s, o);
        v = stats_merge(v, w);
    }
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    if (lane == 0) {
        sh_m[warp] = v.m;
        sh_s[warp] = v.s;
    }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        RowStats w;
        w.m = lane < warps ? sh_m[lane] : -P3O_INF;
        w.s = lane < warps ? sh_s[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            RowStats u;
            u.m = __shfl_xor_sync(0xffffffffu, w.m, o);
            u.s = __shfl_xor_sync(0xffffffffu, w.s, o);
            w = stats_merge(w, u);
        }
        if (lane == 0) {
            sh_m[0] = w.m;
            sh_s[0] = w.s;
        }
    }
    __syncthreads();
    RowStats r;
    r.m = sh_m[0];
    r.s = sh_s[0];
    return r;
}

// Sum of one double per thread over the block; all threads get the result.
__device__ double block_sum_f64(double v) {
    __shared__ double sh[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        double w = lane < warps ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    return sh[0];
}
