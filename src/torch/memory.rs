//! Memory: how the process's C heap treats libtorch's large CPU tensors,
//! and whether a model fits before it is made.
//!
//! glibc serves every allocation above its mmap threshold (at most 32 MiB)
//! with a fresh `mmap` and hands it back with `munmap` on free. The LM head's
//! `[N, V]` tensors (logits, their gradient, the softmax inside the
//! log-sum-exp backward) are 50-100 MB on small models with a 50k vocabulary
//! and are made several times per minibatch, so each one is page-faulted and
//! zeroed by the kernel again: on the 2-core development machine a
//! Pythia-14M-shaped `p3o train` spent more time in the kernel than in
//! libtorch (BENCHMARKS.md). [`keep_freed_memory`] makes glibc serve them
//! from its heap and keep freed memory for reuse instead.

/// Make the C allocator keep freed memory in the process (no `mmap` for
/// large blocks, no trimming of the heap top), so the next tensor of the
/// same size reuses pages that are already mapped. The resident size then
/// stays near its peak instead of falling back between steps. Call it once,
/// before the first large tensor; returns whether the allocator accepted it
/// (always false off glibc, where it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is thread-safe
        // and valid at any time. Blocks mapped before the call stay mapped
        // and are still freed with munmap (glibc marks them per block).
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Refuses, before anything is allocated, a model whose float32 parameters
/// (4 bytes each, as they are made before any cast) exceed the memory this
/// machine has available: on the CPU, Linux's `MemAvailable`. On a GPU the
/// allocator itself reports a failure, which [`super::LanguageModel::new`]
/// returns as an error.
pub fn check_fits(config: &super::config::ModelConfig, device: tch::Device) -> super::Result<()> {
    let bytes = config.parameter_count().saturating_mul(4);
    if device != tch::Device::Cpu {
        return Ok(());
    }
    match available_bytes() {
        Some(free) if bytes > free as u128 => Err(super::TorchError::Input(format!(
            "the model's {} parameters need {:.1} GiB, but this machine has {:.1} GiB available",
            config.parameter_count(),
            bytes as f64 / GIB,
            free as f64 / GIB
        ))),
        _ => Ok(()),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// `MemAvailable` of `/proc/meminfo` in bytes, where there is one.
fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
