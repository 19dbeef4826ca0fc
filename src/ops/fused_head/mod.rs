//! The LM head and its token log-probs as one op ([C-FUSED-HEAD]): hidden
//! states `[N, H]`, the head's weight `[V, H]` (and bias `[V]`), targets
//! `[N]` and a temperature give `logp [N]` and the entropy `[N]` of each
//! row's softmax, and the backward gives the gradients of the hidden
//! states, the weight and the bias, without ever holding the `[N, V]`
//! logits.
//!
//! - [`reference`]: the float64 twin, written from the definition;
//! - `chunked` (feature `torch`): the skeleton of the fast paths, the rows
//!   in chunks, each chunk's logits made by one head product and, in the
//!   backward, made again;
//! - `torch` (feature `torch`): each chunk's softmax by libtorch ops, on
//!   the CPU or the GPU (`kernels = torch`);
//! - `cuda` (features `cuda` and `torch`): each chunk's log-probs and
//!   their backward by the token kernels of `kernels/token_logprob.cu`
//!   (`kernels = cuda`).
//!
//! Why chunks, not a kernel over `h` and `W`: the head products are most of
//! the op's arithmetic and cuBLAS (or MKL) does them at full speed; what
//! materialising costs is memory, `4 N V` bytes of float32 logits and as
//! many again for their gradient, which chunking bounds by `C V`.

#[cfg(feature = "torch")]
mod chunked;
#[cfg(all(feature = "cuda", feature = "torch"))]
pub mod cuda;
mod error;
pub mod reference;
#[cfg(feature = "torch")]
pub mod torch;

#[cfg(feature = "torch")]
pub use chunked::{ChunkMath, Forward, Grads, HeadTensors, backward, forward};
pub use error::HeadError;

/// Rows per chunk when the caller does not say: about `2^24` float32
/// logits (64 MiB) a chunk, at least 16 rows.
pub fn default_chunk(vocab: i64) -> i64 {
    ((1i64 << 24) / vocab.max(1)).max(16)
}
