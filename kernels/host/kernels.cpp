// The kernels of kernels/*.cu compiled for the host (see simt.h), each behind
// a C entry point taking the kernel's own arguments, then the block count and
// block size of the launch. Returns 0, or 1 for a block size simt.h cannot run.
#include "simt.h"

#include "../common.cuh"
#include "../gae.cu"
#include "../pair_losses.cu"
#include "../sequence.cu"
#include "../token_logprob.cu"

#define P3O_HOST_ENTRY(name, params, args)                                                      \
    extern "C" int p3o_host_##name(P3O_UNPAREN params, unsigned blocks, unsigned threads) {     \
        return p3o_host::launch(blocks, threads, [=] { name args; });                           \
    }
#define P3O_UNPAREN(...) __VA_ARGS__

P3O_HOST_ENTRY(token_logprob_fwd_f32,
               (const float* logits, const long long* targets, float* logp, float* lse, int v),
               (logits, targets, logp, lse, v))
P3O_HOST_ENTRY(token_logprob_fwd_bf16,
               (const p3o_bf16* logits, const long long* targets, float* logp, float* lse, int v),
               (logits, targets, logp, lse, v))
P3O_HOST_ENTRY(token_logprob_bwd_f32,
               (const float* logits, const long long* targets, const float* lse,
                const float* grad_logp, float* grad_logits, int v),
               (logits, targets, lse, grad_logp, grad_logits, v))
P3O_HOST_ENTRY(token_logprob_bwd_bf16,
               (const p3o_bf16* logits, const long long* targets, const float* lse,
                const float* grad_logp, p3o_bf16* grad_logits, int v),
               (logits, targets, lse, grad_logp, grad_logits, v))
P3O_HOST_ENTRY(masked_seq_sum,
               (const float* a, const float* c, const float* mask, float* out, int t_len),
               (a, c, mask, out, t_len))
P3O_HOST_ENTRY(pair_loss_p3o_v1, (PAIR_ARGS),
               (lp1, lp2, old1, old2, ref1, ref2, r1, r2, beta, eps, loss, g1, g2, n))
P3O_HOST_ENTRY(pair_loss_p3o_v2, (PAIR_ARGS),
               (lp1, lp2, old1, old2, ref1, ref2, r1, r2, beta, eps, loss, g1, g2, n))
P3O_HOST_ENTRY(pair_loss_dpo, (PAIR_ARGS),
               (lp1, lp2, old1, old2, ref1, ref2, r1, r2, beta, eps, loss, g1, g2, n))
P3O_HOST_ENTRY(gae_reverse_scan,
               (const float* rewards, const float* values, const float* mask, float* adv,
                float* ret, double gamma, double lambda, int batch, int t_len),
               (rewards, values, mask, adv, ret, gamma, lambda, batch, t_len))
