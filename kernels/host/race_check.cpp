// Launches every kernel through the host entry points of kernels.cpp, for
// scripts/kernel-race-check.sh, which builds this with ThreadSanitizer: a
// read and a write of shared memory (or of an output) by two threads of a
// block with no barrier between them is reported as a data race. Values are
// not checked here; tests/cuda_kernels.rs compares them with the reference.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
int p3o_host_token_logprob_fwd_f32(const float*, const long long*, float*, float*, int, unsigned,
                                   unsigned);
int p3o_host_token_logprob_fwd_bf16(const unsigned short*, const long long*, float*, float*, int,
                                    unsigned, unsigned);
int p3o_host_token_logprob_bwd_f32(const float*, const long long*, const float*, const float*,
                                   float*, int, unsigned, unsigned);
int p3o_host_token_logprob_bwd_bf16(const unsigned short*, const long long*, const float*,
                                    const float*, unsigned short*, int, unsigned, unsigned);
int p3o_host_masked_seq_sum(const float*, const float*, const float*, float*, int, unsigned,
                            unsigned);
int p3o_host_pair_loss_p3o_v1(const float*, const float*, const float*, const float*,
                              const float*, const float*, const double*, const double*, double,
                              double, float*, float*, float*, int, unsigned, unsigned);
int p3o_host_gae_reverse_scan(const float*, const float*, const float*, float*, float*, double,
                              double, int, int, unsigned, unsigned);
}

// The block sizes of src/cuda/launch.rs.
constexpr unsigned TOKEN = 256, SEQ = 128, PAIR = 256, GAE = 128;

// A fixed, varied fill (no randomness needed to find races).
static float value(std::size_t i) { return (float)((i * 2654435761u) % 20011) / 1000.0f - 10.0f; }

static int failed = 0;
static void expect_ok(int code, const char* what) {
    if (code != 0) {
        std::fprintf(stderr, "%s: launch refused (%d)\n", what, code);
        failed = 1;
    }
}

static void token(int n, int v) {
    std::size_t len = (std::size_t)n * v;
    std::vector<float> x(len + 1), grad(len);
    std::vector<unsigned short> xb(len), gradb(len);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = value(i);
    for (std::size_t i = 0; i < len; ++i) {
        std::uint32_t u;
        std::memcpy(&u, &x[i], 4);
        xb[i] = (unsigned short)(u >> 16);
    }
    std::vector<long long> t(n);
    for (int r = 0; r < n; ++r) t[r] = (r * 7919) % v;
    t[0] = v;  // out of range: NaN, never read
    std::vector<float> logp(n), lse(2 * n), g(n, 0.5f);
    // Rows from x + 1: unaligned heads, and the backward's scalar path.
    for (const float* rows : {x.data(), x.data() + 1}) {
        expect_ok(p3o_host_token_logprob_fwd_f32(rows, t.data(), logp.data(), lse.data(), v, n, TOKEN),
                  "token fwd f32");
        expect_ok(p3o_host_token_logprob_bwd_f32(rows, t.data(), lse.data(), g.data(), grad.data(), v,
                                                 n, TOKEN),
                  "token bwd f32");
    }
    expect_ok(p3o_host_token_logprob_fwd_bf16(xb.data(), t.data(), logp.data(), lse.data(), v, n, TOKEN),
              "token fwd bf16");
    expect_ok(p3o_host_token_logprob_bwd_bf16(xb.data(), t.data(), lse.data(), g.data(), gradb.data(),
                                              v, n, TOKEN),
              "token bwd bf16");
}

int main() {
    // Every code path of the token kernels: tiny rows, unaligned rows, the
    // forward's warp loop (at V = 5003 in both dtypes, with its shuffles).
    for (int v : {1, 7, 1003, 5003}) token(3, v);

    int b = 3, t_len = 300;
    std::vector<float> a(b * t_len), c(b * t_len), mask(b * t_len), out(b), adv(b * t_len),
        ret(b * t_len);
    for (int i = 0; i < b * t_len; ++i) {
        a[i] = value(i);
        c[i] = value(i + 7);
        mask[i] = (i % t_len) < 200 ? 1.0f : 0.0f;
    }
    expect_ok(p3o_host_masked_seq_sum(a.data(), nullptr, mask.data(), out.data(), t_len, b, SEQ),
              "seq sum");
    expect_ok(p3o_host_masked_seq_sum(a.data(), c.data(), mask.data(), out.data(), t_len, b, SEQ),
              "seq sum with c");
    expect_ok(p3o_host_gae_reverse_scan(a.data(), c.data(), mask.data(), adv.data(), ret.data(), 0.99,
                                        0.95, b, t_len, 1, GAE),
              "gae");

    int n = 300;
    std::vector<float> lp(n), old(n), ref(n), loss(n), g1(n), g2(n);
    std::vector<double> r1(n), r2(n);
    for (int i = 0; i < n; ++i) {
        lp[i] = value(i) - 20.0f;
        old[i] = lp[i] + 0.1f;
        ref[i] = lp[i] - 0.3f;
        r1[i] = value(i + 1);
        r2[i] = value(i + 2);
    }
    expect_ok(p3o_host_pair_loss_p3o_v1(lp.data(), old.data(), old.data(), lp.data(), ref.data(),
                                        ref.data(), r1.data(), r2.data(), 0.05, 0.2, loss.data(),
                                        g1.data(), g2.data(), n, (n + PAIR - 1) / PAIR, PAIR),
              "pair loss");
    if (failed == 0) std::printf("kernel race check: every launch ran\n");
    return failed;
}
