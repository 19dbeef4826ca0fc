// Host execution of the CUDA kernels in kernels/*.cu, for differential tests
// on machines with no GPU (src/cuda/host.rs). Every CUDA thread of a block
// is an OS thread; __syncthreads() is a barrier over the block and a warp
// shuffle is an exchange through a per-warp buffer between two barriers over
// the warp, so the kernels' index arithmetic, alignment handling and
// reductions run as written. Blocks run one after another, which lets
// __shared__ arrays be function-level statics; launches are serialised.
//
// Not modelled: the device's math library (its exp2f and expm1f differ from
// the host's in the last bits; exp2_ftz's flush to zero is modelled, in
// common.cuh), NVRTC code generation, partial-warp masks
// (only full-warp, warp-uniform shuffles are accepted) and memory ordering
// beyond what the barriers give.
#pragma once

#include <barrier>
#include <bit>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
template <class T>
inline T __ldg(const T* p) {
    return *p;
}

namespace p3o_host {

#if defined(__SANITIZE_THREAD__)
// Under ThreadSanitizer (scripts/kernel-race-check.sh), a mutex and condition
// variable barrier, whose ordering the sanitizer sees (it does not see
// through std::barrier's futex waits). A generation count keeps a thread that
// races ahead to the next wait from slipping through this one.
class Barrier {
  public:
    explicit Barrier(unsigned count) : count_(count) {}

    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        unsigned generation = generation_;
        if (++arrived_ == count_) {
            arrived_ = 0;
            ++generation_;
            lock.unlock();
            all_arrived_.notify_all();
            return;
        }
        all_arrived_.wait(lock, [&] { return generation_ != generation; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable all_arrived_;
    unsigned count_;
    unsigned arrived_ = 0;
    unsigned generation_ = 0;
};
#else
using Barrier = std::barrier<>;
#endif

// The 32 lanes of one warp meet here to shuffle.
struct Warp {
    Barrier meet{32};
    std::uint64_t slot[32];
};

// What a CUDA thread can ask about itself.
struct Thread {
    uint3 thread_idx, block_idx, block_dim;
    Barrier* block;
    Warp* warp;
};

inline thread_local Thread self;

// __shared__ arrays are statics, so one kernel runs at a time, whichever.
inline std::mutex one_launch_at_a_time;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "p3o host kernels: %s\n", what);
    std::abort();
}

}  // namespace p3o_host

#define threadIdx (p3o_host::self.thread_idx)
#define blockIdx (p3o_host::self.block_idx)
#define blockDim (p3o_host::self.block_dim)

inline void __syncthreads() { p3o_host::self.block->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    if (mask != 0xffffffffu || lane_mask < 0 || lane_mask > 31) p3o_host::fail("only full-warp shuffles are emulated");
    p3o_host::Warp& w = *p3o_host::self.warp;
    unsigned lane = p3o_host::self.thread_idx.x & 31;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    w.meet.arrive_and_wait();
    bits = w.slot[lane ^ (unsigned)lane_mask];
    w.meet.arrive_and_wait();
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

namespace p3o_host {

// Runs `kernel` over a one-dimensional grid: `threads` OS threads (a
// multiple of 32) take every block in turn, meeting at a barrier after each.
// Returns 0, or 1 for a block size the emulation cannot run.
template <class Kernel>
int launch(unsigned blocks, unsigned threads, Kernel kernel) {
    if (threads == 0 || threads % 32 != 0 || threads > 1024) return 1;
    std::lock_guard<std::mutex> guard(one_launch_at_a_time);
    Barrier block(threads);
    std::unique_ptr<Warp[]> warps(new Warp[threads / 32]);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            self = Thread{{t, 0, 0}, {0, 0, 0}, {threads, 1, 1}, &block, &warps[t / 32]};
            for (unsigned b = 0; b < blocks; ++b) {
                self.block_idx = {b, 0, 0};
                self.thread_idx = {t, 0, 0};
                kernel();
                block.arrive_and_wait();
            }
        });
    }
    for (auto& th : pool) th.join();
    return 0;
}

}  // namespace p3o_host
