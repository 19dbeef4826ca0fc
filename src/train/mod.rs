//! Feature `torch`: the RLHF trainer behind `p3o train` (P3O-V1, P3O-V2,
//! online DPO, PPO) and the toy pipeline around it (SFT, reward model,
//! evaluation, demo). Losses are one function of
//! log-prob tensors per algorithm, differential-tested against
//! `crate::reference`.

pub mod builtin;
pub mod collective;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
#[cfg(feature = "testing")]
pub mod input_cases;
pub mod kernels;
pub mod losses;
pub mod models;
pub mod optim;
pub mod reward_model;
pub mod scoring;
pub mod seed;
pub mod sft;
pub mod trainer;
