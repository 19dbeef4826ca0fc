//! p3o: Pairwise Proximal Policy Optimization, verification-first.
//!
//! The mathematics is stated in `spec/p3o.md`; clause IDs such as
//! `[C-PPG]` in doc comments refer to it.

pub mod bandit;
pub mod case;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "torch")]
pub mod demo;
pub mod reference;
pub mod stats;
pub mod tolerance;
#[cfg(feature = "torch")]
pub mod torch;
pub mod toy;
#[cfg(feature = "torch")]
pub mod train;
