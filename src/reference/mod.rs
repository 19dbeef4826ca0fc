//! The float64 reference on a tabular contextual bandit: policies, the
//! per-pair losses of every algorithm, and the sampled and exact estimators.
//! Every fast path of the crate is differential-tested against this module.

pub mod bradley_terry;
pub mod estimator;
pub mod gae;
pub mod losses;
pub mod policy;
pub mod ppo_tokens;
pub mod shift;
pub mod tokens;

pub use estimator::{Batch, Evaluation, Pair, Problem, evaluate, sample_pairs, surrogate};
pub use losses::{Algorithm, Hyper, PairConsts, PairOutput, PairVars, pair_loss, pair_surrogate};
