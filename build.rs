//! Build script: with feature `cuda`, compile the kernels for the host; with
//! feature `torch`, link libtorch_cuda for real and embed an rpath to
//! libtorch, so binaries and tests run with no library path set.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        host_kernels();
    }
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some() {
        link_torch();
    }
}

/// Feature `cuda`: the kernels of `kernels/*.cu` compiled as C++ for the
/// host (`kernels/host/`), run by `p3o::cuda::host` in the differential
/// tests on machines without a GPU.
fn host_kernels() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=P3O_HOST_KERNEL_FLAGS");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .file("kernels/host/kernels.cpp")
        .opt_level(2)
        // The kernels reinterpret rows as float4 / uint4, as CUDA code does.
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        // NVRTC's warnings are errors (src/cuda/nvrtc.rs); the host compiler
        // adds this one for the DPO kernel's unused epsilon.
        .flag_if_supported("-Wno-unused-parameter");
    // Extra flags for these sources only: scripts/fuzz.sh passes clang's
    // `-fsanitize=fuzzer-no-link`, so that libFuzzer sees the kernels'
    // branches and not only the Rust side's.
    if let Ok(flags) = std::env::var("P3O_HOST_KERNEL_FLAGS") {
        for flag in flags.split_whitespace() {
            build.flag(flag);
        }
    }
    build.compile("p3o_host_kernels");
}

/// Feature `torch`: link libtorch_cuda and embed an rpath to libtorch.
fn link_torch() {
    // Exported by torch-sys (links = "tch") to crates that depend on it directly.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; binaries will need LD_LIBRARY_PATH"
        );
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // With the default --as-needed, libtorch_cuda (only reached through static
    // initialisers) is dropped and tch sees no CUDA even on a GPU machine.
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
