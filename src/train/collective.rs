//! The seam where data-parallel training will go: how a run's processes
//! split the prompts of a step and combine their gradients. One process is
//! all there is today ([`SingleProcess`]); an NCCL implementation would
//! shard the prompts per rank and all-reduce the summed minibatch gradients
//! before the optimizer step.

use std::ops::Range;

use tch::Tensor;

use super::error::TrainError;

/// What the processes of a run do together.
pub trait Collective {
    /// This process's share of `n` items (the prompts of a step), as the
    /// range of their indices.
    fn shard(&self, n: usize) -> Range<usize>;

    /// Combines the gradients `grads` of every process in place (their mean
    /// over processes), between summing the minibatch gradients and the
    /// optimizer step.
    fn all_reduce_gradients(&self, grads: &mut [Tensor]) -> Result<(), TrainError>;
}

/// One process: it keeps every prompt, and its gradients are the run's.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn shard(&self, n: usize) -> Range<usize> {
        0..n
    }

    fn all_reduce_gradients(&self, _grads: &mut [Tensor]) -> Result<(), TrainError> {
        Ok(())
    }
}
