//! Feature `torch`: the RLHF trainer behind `p3o train`. So far: the
//! sequence-level losses, each one function of log-prob tensors that matches
//! its spec clause and is differential-tested against `crate::reference`.

pub mod losses;
