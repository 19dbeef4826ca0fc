//! Locating NVRTC and compiling the embedded kernel sources, with warnings
//! treated as errors.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::result as nvrtc;

use super::CudaError;

/// Every kernel file, embedded in the binary, with its name.
pub const KERNEL_FILES: [(&str, &str); 4] = [
    (
        "token_logprob.cu",
        include_str!("../../kernels/token_logprob.cu"),
    ),
    ("sequence.cu", include_str!("../../kernels/sequence.cu")),
    (
        "pair_losses.cu",
        include_str!("../../kernels/pair_losses.cu"),
    ),
    ("gae.cu", include_str!("../../kernels/gae.cu")),
];

/// The shared header, prepended to every kernel file.
const COMMON: &str = include_str!("../../kernels/common.cuh");

/// The NVRTC pip package the project's set-up installs (`scripts/setup-cuda.sh`).
pub const NVRTC_PACKAGE: &str = "nvidia-cuda-nvrtc==13.0.88";

const LIBNVRTC: &str = "libnvrtc.so.13";
const LIBNVRTC_BUILTINS: &str = "libnvrtc-builtins.so.13.0";

/// Folders searched for `libnvrtc.so.13`, in order: `$P3O_NVRTC_DIR`, the
/// set-up's cache (`$P3O_CACHE` or `~/.cache/p3o`), then `$LD_LIBRARY_PATH`.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("P3O_NVRTC_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let cache = std::env::var_os("P3O_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/p3o")));
    if let Some(cache) = cache {
        dirs.push(cache.join("nvrtc-13.0.88/nvidia/cu13/lib"));
    }
    if let Some(path) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Finds NVRTC and loads it (and its builtins) process-wide, so that
/// cudarc's own look-up by soname finds the loaded copy instead of panicking.
pub fn ensure_loaded() -> Result<(), CudaError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let dirs = candidate_dirs();
            let dir = dirs.iter().find(|d| d.join(LIBNVRTC).is_file()).ok_or_else(|| {
                format!(
                    "searched {}; run scripts/setup-cuda.sh (pip package {NVRTC_PACKAGE}) or set P3O_NVRTC_DIR",
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            })?;
            for lib in [LIBNVRTC_BUILTINS, LIBNVRTC] {
                let path = dir.join(lib);
                // SAFETY: loading NVRTC runs only its own initialisers; the
                // handle is leaked so the library stays loaded for the
                // process, as cudarc expects of its dynamically loaded libraries.
                let handle = unsafe {
                    libloading::os::unix::Library::open(
                        Some(&path),
                        libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                    )
                }
                .map_err(|e| format!("{}: {e}", path.display()))?;
                std::mem::forget(handle);
            }
            Ok(())
        })
        .clone()
        .map_err(CudaError::NvrtcNotFound)
}

/// Compiles one kernel file to PTX for a virtual architecture such as
/// `compute_90`. A non-empty compiler log (a warning) is an error.
pub fn compile(file: &str, arch: &str) -> Result<String, CudaError> {
    let (_, body) = KERNEL_FILES
        .iter()
        .find(|(name, _)| *name == file)
        .ok_or_else(|| CudaError::Input(format!("no kernel file {file}")))?;
    compile_source(file, body, arch)
}

/// Compiles `body` (with the shared header prepended) to PTX; a non-empty
/// compiler log is an error.
pub fn compile_source(file: &str, body: &str, arch: &str) -> Result<String, CudaError> {
    ensure_loaded()?;
    let fail = |log: String| CudaError::Compile {
        file: file.to_string(),
        arch: arch.to_string(),
        log,
    };
    let source = CString::new(format!("{COMMON}\n#line 1 \"{file}\"\n{body}"))
        .map_err(|e| fail(e.to_string()))?;
    let name = CString::new(file).map_err(|e| fail(e.to_string()))?;
    let program =
        nvrtc::create_program(&source, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    // SAFETY: `program` is a live NVRTC program created above; it is
    // destroyed exactly once, after its log and PTX have been copied out.
    unsafe {
        let compiled = nvrtc::compile_program(program, &options);
        let log = nvrtc::get_program_log(program)
            .map(|raw| c_chars_to_string(&raw))
            .unwrap_or_default();
        let ptx = compiled.and_then(|()| nvrtc::get_ptx(program));
        let _ = nvrtc::destroy_program(program);
        match ptx {
            Ok(ptx) if log.trim().is_empty() => Ok(c_chars_to_string(&ptx)),
            Ok(_) => Err(fail(format!("warnings are errors here:\n{log}"))),
            Err(e) => Err(fail(format!("{e:?}\n{log}"))),
        }
    }
}

fn c_chars_to_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
