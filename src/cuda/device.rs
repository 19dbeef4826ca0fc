//! Device detection and the per-device cache of compiled kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use super::CudaError;
use super::nvrtc::{KERNEL_FILES, compile};

/// Kernel entry points, by the names in `kernels/*.cu`.
pub const KERNEL_NAMES: [&str; 9] = [
    "token_logprob_fwd_f32",
    "token_logprob_fwd_bf16",
    "token_logprob_bwd_f32",
    "token_logprob_bwd_bf16",
    "masked_seq_sum",
    "pair_loss_p3o_v1",
    "pair_loss_p3o_v2",
    "pair_loss_dpo",
    "gae_reverse_scan",
];

/// Whether the CUDA driver library can be loaded at all. cudarc panics when
/// it is missing, so this is asked first.
fn driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver library runs only its initialisers; the
        // handle is dropped at once (cudarc loads it again on first use).
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// The kernels compiled and loaded for one device.
pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    pub fn get(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }
}

/// A CUDA device with its stream and kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kernels: Arc<Kernels>,
    /// `compute_XY` of the device.
    pub arch: String,
}

impl Gpu {
    /// Opens device `ordinal` and loads its kernels: compiled by NVRTC once
    /// per process and device, then cached.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDevice(
                "the CUDA driver library (libcuda.so.1) is not installed".into(),
            ));
        }
        let count =
            CudaContext::device_count().map_err(|e| CudaError::NoDevice(format!("{e:?}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = format!("compute_{major}{minor}");
        let kernels = cached_kernels(&ctx, ordinal, &arch)?;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            arch,
        })
    }
}

fn cached_kernels(
    ctx: &Arc<CudaContext>,
    ordinal: usize,
    arch: &str,
) -> Result<Arc<Kernels>, CudaError> {
    static CACHE: Mutex<Vec<(usize, Arc<Kernels>)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, k)) = cache.iter().find(|(o, _)| *o == ordinal) {
        return Ok(k.clone());
    }
    let mut functions = HashMap::new();
    for (file, _) in KERNEL_FILES {
        let module = ctx.load_module(Ptx::from_src(compile(file, arch)?))?;
        for name in KERNEL_NAMES {
            if let Ok(f) = module.load_function(name) {
                functions.insert(name, f);
            }
        }
    }
    if let Some(missing) = KERNEL_NAMES.iter().find(|n| !functions.contains_key(*n)) {
        return Err(CudaError::Input(format!(
            "kernel {missing} is in no kernel file"
        )));
    }
    let kernels = Arc::new(Kernels { functions });
    cache.push((ordinal, kernels.clone()));
    Ok(kernels)
}
