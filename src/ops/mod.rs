//! The language-model ops with a contract of their own, one folder each:
//! the contract (the folder's `mod.rs`), its float64 reference twin, and the
//! fast paths checked against it.

pub mod fused_head;
