//! Shape checks and grid sizes of every kernel launch, shared by the device
//! launchers (`ops`, `torch_ops`) and the host execution (`host`), so that
//! the differential tests run the kernels over the grids the GPU gets.

use super::CudaError;

/// Threads per block of each kernel family (the `*_BLOCK` macros in
/// `kernels/`).
pub const TOKEN_BLOCK: u32 = 256;
pub const SEQ_BLOCK: u32 = 128;
pub const PAIR_BLOCK: u32 = 256;
pub const GAE_BLOCK: u32 = 128;

/// A one-dimensional launch: `blocks` blocks of `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub blocks: u32,
    pub threads: u32,
}

impl From<Grid> for cudarc::driver::LaunchConfig {
    fn from(g: Grid) -> Self {
        cudarc::driver::LaunchConfig {
            grid_dim: (g.blocks, 1, 1),
            block_dim: (g.threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// `Err(CudaError::Input)` with the message of `what` unless `cond`.
pub(crate) fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), CudaError> {
    if cond {
        Ok(())
    } else {
        Err(CudaError::Input(what()))
    }
}

/// `blocks` blocks of `threads`, if one launch can hold them.
fn grid(blocks: usize, threads: u32) -> Result<Grid, CudaError> {
    check(blocks >= 1 && blocks <= i32::MAX as usize, || {
        format!("{blocks} blocks do not fit one launch")
    })?;
    Ok(Grid {
        blocks: blocks as u32,
        threads,
    })
}

/// The number of rows of a buffer of `len` elements in rows of `v`.
fn rows(len: usize, v: usize) -> Result<usize, CudaError> {
    check(v >= 1 && v <= i32::MAX as usize, || {
        format!("vocabulary size {v} out of range")
    })?;
    check(len.is_multiple_of(v) && len > 0, || {
        format!("logits length {len} is not a positive multiple of V = {v}")
    })?;
    Ok(len / v)
}

/// [C-TOKEN-LOGPROB] forward over `logits` elements in rows of `v`: one
/// block per row; `targets` and `logp` hold N, `lse` 2N.
pub fn token_fwd(
    logits: usize,
    v: usize,
    targets: usize,
    logp: usize,
    lse: usize,
) -> Result<Grid, CudaError> {
    let n = rows(logits, v)?;
    check(targets == n && logp == n && lse == 2 * n, || {
        format!("N = {n}: targets {targets}, logp {logp}, lse {lse}")
    })?;
    grid(n, TOKEN_BLOCK)
}

/// [C-TOKEN-LOGPROB] backward: as the forward, with `grad_logp` of N and
/// `grad_logits` of the logits' length.
pub fn token_bwd(
    logits: usize,
    v: usize,
    targets: usize,
    lse: usize,
    grad_logp: usize,
    grad_logits: usize,
) -> Result<Grid, CudaError> {
    let n = rows(logits, v)?;
    check(
        targets == n && lse == 2 * n && grad_logp == n && grad_logits == logits,
        || {
            format!(
                "N = {n}, V = {v}: targets {targets}, lse {lse}, grad_logp {grad_logp}, grad_logits {grad_logits}"
            )
        },
    )?;
    grid(n, TOKEN_BLOCK)
}

/// [C-SEQ-LOGPROB] over `[B, T]` inputs: one block per sequence.
pub fn seq_sum(
    a: usize,
    c: Option<usize>,
    mask: usize,
    t_len: usize,
    out: usize,
) -> Result<Grid, CudaError> {
    let b = rows(a, t_len)?;
    check(mask == a && out == b && c.is_none_or(|c| c == a), || {
        format!("B = {b}, T = {t_len}: mask {mask}, out {out}")
    })?;
    grid(b, SEQ_BLOCK)
}

/// The pair kernels over `n` pairs, every buffer (`lens`) holding `n`; one
/// thread per pair. Returns the grid and `n`.
pub fn pairs(n: usize, lens: &[usize]) -> Result<(Grid, i32), CudaError> {
    check(n >= 1 && lens.iter().all(|&l| l == n), || {
        format!("pair buffers differ in length: {n} vs {lens:?}")
    })?;
    let n32 = i32::try_from(n)
        .map_err(|_| CudaError::Input(format!("{n} pairs do not fit one launch")))?;
    Ok((grid(n.div_ceil(PAIR_BLOCK as usize), PAIR_BLOCK)?, n32))
}

/// [C-GAE] over `[B, T]` buffers (`lens`, all of `len` elements): one
/// thread per sequence. Returns the grid and B.
pub fn gae(len: usize, t_len: usize, lens: &[usize]) -> Result<(Grid, i32), CudaError> {
    let b = rows(len, t_len)?;
    check(lens.iter().all(|&l| l == len), || {
        format!("B = {b}, T = {t_len}: every buffer must hold {len} elements, got {lens:?}")
    })?;
    let b32 = i32::try_from(b)
        .map_err(|_| CudaError::Input(format!("{b} sequences do not fit one launch")))?;
    Ok((grid(b.div_ceil(GAE_BLOCK as usize), GAE_BLOCK)?, b32))
}
