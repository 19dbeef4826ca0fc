//! `p3o sweep` ([C-SWEEP]): every arm of the toy pipeline over seeds and KL
//! coefficients, resumable, with the statistics that weigh the paper's
//! claims ([C-STATS]) in `report.md`, `results.json` and figures.
//!
//! - [`analysis`]: the statistics, from the runs' records alone;
//! - `config`, `run`, `results`, `report`, `figures` (feature `torch`):
//!   the sweep's keys, its units and their resumption, what it measured
//!   and what it writes.

pub mod analysis;
#[cfg(feature = "torch")]
pub mod config;
#[cfg(feature = "torch")]
pub mod figures;
#[cfg(feature = "torch")]
pub mod report;
#[cfg(feature = "torch")]
pub mod results;
#[cfg(feature = "torch")]
pub mod run;
