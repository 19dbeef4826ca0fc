//! p3o: Pairwise Proximal Policy Optimization, verification-first.
//!
//! The mathematics is stated in `spec/p3o.md`; clause IDs such as
//! `[C-PPG]` in doc comments refer to it.
//!
//! Feature `testing` adds what only the tests, fuzz targets and benchmarks
//! use (tolerances, the kernels' comparison rules and fuzz-case decoders,
//! a NaN reward, trainer accessors); the test suite enables it, and a build
//! of the product does not.

pub mod bandit;
pub mod bandit_frontier;
pub mod case;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "torch")]
pub mod demo;
pub mod device;
pub mod json;
pub mod ops;
#[cfg(feature = "torch")]
pub mod plots;
pub mod reference;
pub mod run_dir;
pub mod stats;
pub mod sweep;
#[cfg(feature = "testing")]
pub mod tolerance;
#[cfg(feature = "torch")]
pub mod torch;
pub mod toy;
#[cfg(feature = "torch")]
pub mod train;
