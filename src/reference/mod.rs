//! The float64 reference on a tabular contextual bandit: policies, the
//! per-pair losses of every algorithm, and the sampled and exact estimators.
//! Every fast path of the crate is differential-tested against this module.

pub mod bradley_terry;
pub mod clip;
pub mod estimator;
pub mod gae;
pub mod group;
pub mod group_losses;
pub mod losses;
pub mod policy;
pub mod ppo_tokens;
pub mod shift;
pub mod tokens;
pub mod trlx_tokens;

pub use estimator::{
    Batch, Evaluation, Group, Pair, Problem, evaluate, sample_groups, sample_pairs, surrogate,
};
pub use group_losses::ScaleRewards;
pub use losses::{Algorithm, Hyper, PairConsts, PairOutput, PairVars, pair_loss, pair_surrogate};
