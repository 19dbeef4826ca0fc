//! The CUDA kernels: NVRTC compile checks (no GPU needed) and differential
//! tests against the float64 reference, run twice: on the host execution of
//! the same kernel sources (`p3o::cuda::host`, every machine; tests named
//! `host_*`, smaller shapes) and on the GPU (reported as skipped without a
//! device, and failing under `P3O_REQUIRE_GPU=1`). Outputs are poisoned with NaN before every launch and checked
//! fully written.
#![cfg(feature = "cuda")]

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cudarc::driver::{CudaSlice, DeviceRepr};
use p3o::cuda::compare::{
    self, Disagreement, GaeOutputs, TokenOutputs, TokenRow, check_token_row, check_token_rows,
};
use p3o::cuda::device::KERNEL_NAMES;
use p3o::cuda::host::{Host, HostLogitElement};
use p3o::cuda::nvrtc::{KERNEL_FILES, compile};
use p3o::cuda::ops::{Bf16, LogitElement, PairInputs, PairOutputs};
use p3o::cuda::sequence_case::{SequenceCase, SequenceKernels};
use p3o::cuda::token_case::TokenCase;
use p3o::cuda::{CudaError, Gpu};
use p3o::reference::gae::gae;
use p3o::reference::tokens::{token_logprob, token_logprob_grad};
use p3o::reference::{Algorithm, Hyper, PairConsts, PairVars, pair_loss};
use p3o::tolerance::{BF16_GRAD, F32_GRAD, F32_VS_F64, GradTolerance};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn compile_all(arch: &str) {
    for (file, _) in KERNEL_FILES {
        match compile(file, arch) {
            Ok(ptx) => assert!(ptx.contains(".entry"), "{file}: no kernel entry in the PTX"),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn kernels_compile_sm80() {
    compile_all("compute_80");
}

#[test]
fn kernels_compile_sm90() {
    compile_all("compute_90");
}

/// The compile check has teeth: a warning (an unused variable) fails it.
#[test]
fn kernels_compile_rejects_warnings() {
    let src = "extern \"C\" __global__ void k(float* p) { int unused = 3; p[0] = 1.0f; }";
    match p3o::cuda::nvrtc::compile_source("warning.cu", src, "compute_90") {
        Err(CudaError::Compile { log, .. }) => assert!(log.contains("warning"), "{log}"),
        other => panic!("expected a compile error, got {:?}", other.map(|p| p.len())),
    }
}

/// (logp, lse, grad_logits) of the token kernels.
type TokenOut<T> = (Vec<f32>, Vec<f32>, Vec<T>);

/// ptxas or nvdisasm as installed by `scripts/setup-cuda.sh` (the folder
/// `$P3O_CUDA_TOOLS` replaces it).
fn cuda_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("P3O_CUDA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("P3O_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/p3o")))
                .expect("HOME or P3O_CACHE is set");
            cache.join("cuda-tools-13.0.88/bin")
        });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run scripts/setup-cuda.sh (or set P3O_CUDA_TOOLS)",
        path.display()
    );
    path
}

/// What ptxas reports of one kernel.
#[derive(Debug, Default)]
struct Resources {
    registers: u32,
    stack_bytes: u32,
    spill_bytes: u32,
}

/// Runs `program` with `args`, returning stdout and stderr; a failure panics
/// with both.
fn run_tool(program: &Path, args: &[&OsStr]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", program.display());
    text
}

/// The numbers of `ptxas -v`, per kernel.
fn parse_ptxas(log: &str) -> HashMap<String, Resources> {
    let number_before = |line: &str, what: &str| -> u32 {
        let head = &line[..line
            .find(what)
            .unwrap_or_else(|| panic!("{what} in {line}"))];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    let mut kernels: HashMap<String, Resources> = HashMap::new();
    let mut current = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap().to_string();
            kernels.entry(current.clone()).or_default();
        } else if line.contains("bytes stack frame") {
            let r = kernels.get_mut(&current).unwrap();
            r.stack_bytes = number_before(line, "bytes stack frame");
            r.spill_bytes = number_before(line, "bytes spill stores")
                + number_before(line, "bytes spill loads");
        } else if line.contains("Used") && line.contains("registers") {
            kernels.get_mut(&current).unwrap().registers = number_before(line, "registers");
        }
    }
    kernels
}

/// PTX from NVRTC for `compute_{sm}`, assembled by ptxas for `sm_{sm}`:
/// the resources of each kernel and the disassembly (nvdisasm).
fn assemble(sm: &str, sources: &[(&str, String)]) -> (HashMap<String, Resources>, String) {
    let dir = std::env::temp_dir().join(format!("p3o-assemble-{sm}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut kernels, mut sass) = (HashMap::new(), String::new());
    for (file, ptx) in sources {
        let ptx_path = dir.join(format!("{file}.ptx"));
        let cubin = dir.join(format!("{file}.cubin"));
        std::fs::write(&ptx_path, ptx).unwrap();
        let arch = format!("-arch=sm_{sm}");
        let log = run_tool(
            &cuda_tool("ptxas"),
            &[
                arch.as_ref(),
                "-v".as_ref(),
                ptx_path.as_os_str(),
                "-o".as_ref(),
                cubin.as_os_str(),
            ],
        );
        kernels.extend(parse_ptxas(&log));
        sass += &run_tool(&cuda_tool("nvdisasm"), &["-c".as_ref(), cubin.as_os_str()]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    (kernels, sass)
}

/// The disassembly of kernel `name`, up to the next kernel's.
fn kernel_text<'a>(sass: &'a str, name: &str) -> &'a str {
    let label = format!(".text.{name}:");
    let Some(start) = sass.find(&label) else {
        panic!("{name} is not in the disassembly")
    };
    let body = &sass[start + label.len()..];
    &body[..body.find("\n.text.").map_or(body.len(), |e| e + 1)]
}

/// The instructions of a disassembly's lines, without their addresses.
fn instructions(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|l| l.split("*/").nth(1))
        .map(str::trim)
        .filter(|i| !i.is_empty())
}

/// The instruction mnemonics of kernel `name` in a disassembly.
fn mnemonics<'a>(sass: &'a str, name: &str) -> Vec<&'a str> {
    instructions(kernel_text(sass, name))
        .filter_map(|i| i.split_whitespace().find(|w| !w.starts_with('@')))
        .collect()
}

/// The loops of kernel `name`: for each backward branch, the instructions
/// from its target label to the branch itself.
fn loops<'a>(sass: &'a str, name: &str) -> Vec<Vec<&'a str>> {
    let mut labels = HashMap::new();
    let mut body = Vec::new();
    let mut found = Vec::new();
    for line in kernel_text(sass, name).lines() {
        if let Some(label) = line.trim().strip_suffix(':') {
            labels.insert(label, body.len());
            continue;
        }
        let Some(ins) = instructions(line).next() else {
            continue;
        };
        body.push(ins);
        let target = ins.split("BRA `(").nth(1).and_then(|t| t.split(')').next());
        if let Some(&start) = target.and_then(|t| labels.get(t)) {
            found.push(body[start..].to_vec());
        }
    }
    found
}

/// The branches (its own back edge included) of the loop of kernel `name`
/// that holds an instruction starting with `op`.
fn loop_branches(sass: &str, name: &str, op: &str) -> usize {
    let all = loops(sass, name);
    let Some(body) = all.iter().find(|l| {
        l.iter()
            .any(|i| i.split_whitespace().any(|w| w.starts_with(op)))
    }) else {
        panic!("{name}: no loop with {op} among {all:?}")
    };
    body.iter().filter(|i| i.contains("BRA")).count()
}

/// Every kernel assembled for `sm_{sm}`: no local memory (stack frame or
/// spills); the token kernels fit 32 registers, so that eight blocks of 256
/// threads (all 2048 threads an SM can hold) share its 65536 registers, and
/// move the logits with 16-byte loads (and the backward's gradient with
/// 16-byte stores, in a loop with no branch per logit), as
/// kernels/token_logprob.cu intends.
fn check_assembly(sm: &str) {
    let sources: Vec<(&str, String)> = KERNEL_FILES
        .iter()
        .map(|(file, _)| (*file, compile(file, &format!("compute_{sm}")).unwrap()))
        .collect();
    let (kernels, sass) = assemble(sm, &sources);
    println!("sm_{sm}: kernel, registers, stack bytes, spill bytes");
    for name in KERNEL_NAMES {
        let r = kernels
            .get(name)
            .unwrap_or_else(|| panic!("ptxas reported nothing for {name}"));
        println!(
            "  {name}: {} registers, {} stack, {} spill",
            r.registers, r.stack_bytes, r.spill_bytes
        );
        assert_eq!(
            (r.stack_bytes, r.spill_bytes),
            (0, 0),
            "{name}: local memory"
        );
        if name.starts_with("token_logprob") {
            assert!(r.registers <= 32, "{name}: {} registers", r.registers);
            let ops = mnemonics(&sass, name);
            assert!(
                ops.iter().any(|op| op.starts_with("LDG.E.128")),
                "{name}: no 16-byte loads in {ops:?}"
            );
            if name.contains("bwd") {
                assert!(
                    ops.iter().any(|op| op.starts_with("STG.E.128")),
                    "{name}: no 16-byte stores in {ops:?}"
                );
                let branches = loop_branches(&sass, name, "STG.E.128");
                assert_eq!(branches, 1, "{name}: a branch inside the vector loop");
            }
        }
    }
}

#[test]
fn kernels_assemble_sm80() {
    check_assembly("80");
}

#[test]
fn kernels_assemble_sm90() {
    check_assembly("90");
}

/// The assembly check has teeth: a dynamically indexed local array is
/// local memory, a kernel with 4-byte accesses only has no 16-byte ones, and
/// a loop with an `expm1f` for some elements branches inside.
#[test]
fn kernels_assemble_sees_local_memory_scalar_loads_and_branches() {
    let src = "extern \"C\" __global__ void local_array(float* p, int i) {\n\
               float a[1024];\n\
               for (int j = 0; j < 1024; ++j) a[(j * i) & 1023] = p[j];\n\
               p[0] = a[i & 1023];\n}\n\
               extern \"C\" __global__ void branchy(float4* p, int n, int t) {\n\
               for (int i = threadIdx.x; i < n; i += 256) {\n\
               float4 q = p[i];\n\
               q.x = i == t ? expm1f(q.x) : q.x * 2.0f;\n\
               p[i] = q;\n}\n}\n";
    let ptx = p3o::cuda::nvrtc::compile_source("teeth.cu", src, "compute_90").unwrap();
    let (kernels, sass) = assemble("90", &[("teeth.cu", ptx)]);
    assert!(kernels["local_array"].stack_bytes >= 4096, "{kernels:?}");
    let ops = mnemonics(&sass, "local_array");
    assert!(!ops.iter().any(|op| op.starts_with("LDG.E.128")), "{ops:?}");
    assert!(ops.iter().any(|op| op.starts_with("LDG.E")), "{ops:?}");
    assert!(loop_branches(&sass, "branchy", "STG.E.128") > 1);
}

/// Where the kernels run: the GPU, or the host execution of the same
/// sources. Every output is poisoned with NaN before the launch.
trait Backend: SequenceKernels {
    /// fwd and bwd of the token kernels.
    fn token<T: HostLogitElement>(
        &self,
        logits: &[T],
        targets: &[i64],
        g: &[f32],
        v: usize,
        nan: T,
    ) -> Result<TokenOut<T>, CudaError>;
}

fn nans(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

impl Backend for Host {
    fn token<T: HostLogitElement>(
        &self,
        logits: &[T],
        targets: &[i64],
        g: &[f32],
        v: usize,
        nan: T,
    ) -> Result<TokenOut<T>, CudaError> {
        let n = targets.len();
        let (mut logp, mut lse, mut grad) = (nans(n), nans(2 * n), vec![nan; logits.len()]);
        self.token_logprob_fwd(logits, targets, v, &mut logp, &mut lse)?;
        self.token_logprob_bwd(logits, targets, &lse, g, v, &mut grad)?;
        Ok((logp, lse, grad))
    }
}

fn upload<T: DeviceRepr>(gpu: &Gpu, v: &[T]) -> CudaSlice<T> {
    gpu.stream.memcpy_stod(v).unwrap()
}

fn download<T: DeviceRepr + Default + Clone>(gpu: &Gpu, s: &CudaSlice<T>) -> Vec<T> {
    gpu.stream.memcpy_dtov(s).unwrap()
}

impl Backend for Gpu {
    fn token<T: HostLogitElement>(
        &self,
        logits: &[T],
        targets: &[i64],
        g: &[f32],
        v: usize,
        nan: T,
    ) -> Result<TokenOut<T>, CudaError> {
        let n = targets.len();
        let (d_logits, d_targets, d_g) =
            (upload(self, logits), upload(self, targets), upload(self, g));
        let mut logp = upload(self, &nans(n));
        let mut lse = upload(self, &nans(2 * n));
        let mut grad = upload(self, &vec![nan; logits.len()]);
        self.token_logprob_fwd(&d_logits, &d_targets, v, &mut logp, &mut lse)?;
        self.token_logprob_bwd(&d_logits, &d_targets, &lse, &d_g, v, &mut grad)?;
        Ok((
            download(self, &logp),
            download(self, &lse),
            self.stream.memcpy_dtov(&grad)?,
        ))
    }
}

/// The device, or `None` after reporting the test as skipped (a failure
/// under `P3O_REQUIRE_GPU=1`).
fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(CudaError::NoDevice(why)) => {
            common::skip_without_gpu(&format!("no CUDA device ({why})"));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Random `[n, v]` logits uniform in `[-scale, scale]`, targets and upstream
/// gradients; with `masked`, about a third of the logits other than the
/// targets are `-inf`.
fn token_inputs<T: Copy>(
    n: usize,
    v: usize,
    scale: f32,
    masked: bool,
    seed: u64,
    quantise: impl Fn(f32) -> T,
) -> (Vec<T>, Vec<i64>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let targets: Vec<i64> = (0..n).map(|_| rng.random_range(0..v as i64)).collect();
    let logits: Vec<T> = (0..n * v)
        .map(|i| {
            let x = scale * (2.0 * rng.random::<f32>() - 1.0);
            let is_target = (i % v) as i64 == targets[i / v];
            let drop = masked && !is_target && rng.random::<f32>() < 1.0 / 3.0;
            quantise(if drop { f32::NEG_INFINITY } else { x })
        })
        .collect();
    let g: Vec<f32> = (0..n).map(|_| 2.0 * rng.random::<f32>() - 1.0).collect();
    (logits, targets, g)
}

/// The token kernels' outputs against the float64 reference, row by row.
#[allow(clippy::too_many_arguments)]
fn check_token_outputs<T: LogitElement>(
    ctx: &str,
    logits: &[T],
    targets: &[i64],
    g: &[f32],
    v: usize,
    (logp, lse, grad): TokenOut<T>,
    grad_tol: GradTolerance,
) {
    let out = TokenOutputs {
        logp: &logp,
        lse: &lse,
        grad: &grad,
    };
    if let Err((r, e)) = check_token_rows(logits, targets, g, v, out, grad_tol) {
        panic!("{ctx} row {r}: {e}");
    }
}

/// The comparison passes the reference's own outputs and catches each
/// kind of wrong output: a scalar off, a gradient entry off, one left
/// unwritten.
// spec: C-TOKEN-LOGPROB
#[test]
fn check_token_row_has_teeth() {
    let x = [0.5, f64::NEG_INFINITY, -2.0, 3.0];
    let (logp, lse) = token_logprob(&x, 2);
    let grad = token_logprob_grad(&x, 2, -0.75);
    let row = TokenRow {
        logits: &x,
        target: 2,
        g: -0.75,
        logp,
        lse,
        grad: &grad,
    };
    fn check(row: TokenRow<'_>) -> Result<(), Disagreement> {
        check_token_row(row, F32_GRAD)
    }
    assert_eq!(check(row), Ok(()));
    let off = logp * (1.0 + 3.0 * F32_VS_F64);
    assert!(matches!(
        check(TokenRow { logp: off, ..row }),
        Err(Disagreement::Scalar { what: "logp", .. })
    ));
    assert!(matches!(
        check(TokenRow {
            lse: f64::NAN,
            ..row
        }),
        Err(Disagreement::Scalar { what: "lse", .. })
    ));
    for (at, bad) in [(3, grad[3] + 1e-3), (1, f64::NAN)] {
        let mut wrong = grad.clone();
        wrong[at] = bad;
        let got = check(TokenRow {
            grad: &wrong,
            ..row
        });
        assert!(
            matches!(got, Err(Disagreement::Gradient { at: a, .. }) if a == at),
            "{got:?}"
        );
    }
}

/// The float64 kernels' comparisons ([C-F64-KERNELS]) pass the reference's
/// outputs rounded to float32 and catch: a sum accumulated in float32
/// where terms cancel, a loss off by 16 float32 roundings, a gradient
/// clipped off the band's edge (while one on the edge, of P3O-V2's log-ratio
/// band or P3O-V1's ratio band, may be either), and an output left
/// unwritten.
// spec: C-F64-KERNELS C-CLIP
#[test]
fn float64_checks_have_teeth() {
    // 2^30 + 1 - 2^30: 1 in float64, 0 in float32.
    let a = [1_073_741_824.0f32, 1.0, -1_073_741_824.0];
    let mask = [1.0f32; 3];
    assert_eq!(compare::check_seq_sums(&a, None, &mask, 3, &[1.0]), Ok(()));
    for bad in [0.0, f32::NAN] {
        let got = compare::check_seq_sums(&a, None, &mask, 3, &[bad]);
        assert!(
            matches!(got, Err((0, Disagreement::Rounded { .. }))),
            "{got:?}"
        );
    }

    // P3O-V2, eps = 1/4, l_old = 1: pair 0 has l = 2 (clipped, gradient 0),
    // pair 1 has l = 1.25, on the band's edge (gradient passes).
    let x = PairInputs {
        lp: [vec![-1.0f32, -1.75], vec![-3.0, -3.0]],
        lp_old: [vec![-2.0f32, -2.0], vec![-3.0, -3.0]],
        lp_ref: [vec![-2.5f32, -2.5], vec![-2.0, -2.0]],
        reward: [vec![1.5, 1.5], vec![-0.5, -0.5]],
    };
    let h = Hyper {
        beta: 0.1,
        epsilon: 0.25,
        vf_coef: 1.0,
        ..Hyper::default()
    };
    let reference = |h: &Hyper, i: usize| {
        let at = |p: &[Vec<f32>; 2]| [f64::from(p[0][i]), f64::from(p[1][i])];
        let c = PairConsts {
            reward: [x.reward[0][i], x.reward[1][i]],
            lp_old: at(&x.lp_old),
            lp_ref: at(&x.lp_ref),
        };
        pair_loss(
            Algorithm::P3oV2,
            h,
            &c,
            PairVars {
                lp: at(&x.lp),
                value: 0.0,
            },
        )
    };
    let want: Vec<_> = (0..2).map(|i| reference(&h, i)).collect();
    let free = reference(
        &Hyper {
            epsilon: f64::INFINITY,
            ..h
        },
        0,
    )
    .grad
    .lp;
    assert_eq!(want[0].grad.lp, [0.0, 0.0]);
    assert!(want[1].grad.lp[0] != 0.0);
    let out = |f: &dyn Fn(usize, &mut [f32; 3])| {
        let mut rows: Vec<[f32; 3]> = want
            .iter()
            .map(|w| [w.loss as f32, w.grad.lp[0] as f32, w.grad.lp[1] as f32])
            .collect();
        for (i, r) in rows.iter_mut().enumerate() {
            f(i, r);
        }
        PairOutputs {
            loss: rows.iter().map(|r| r[0]).collect(),
            grad: [1, 2].map(|k| rows.iter().map(|r| r[k]).collect()),
        }
    };
    let check = |o: &PairOutputs<Vec<f32>>| compare::check_pairs(Algorithm::P3oV2, &h, &x, o);
    assert_eq!(check(&out(&|_, _| {})), Ok(()));
    // On the edge, the clipped side's 0 is right too.
    assert_eq!(
        check(&out(&|i, r| if i == 1 {
            r[1] = 0.0;
            r[2] = 0.0
        })),
        Ok(())
    );
    let off_edge = check(&out(&|i, r| {
        if i == 0 {
            r[1] = free[0] as f32
        }
    }));
    assert!(
        matches!(off_edge, Err((0, Disagreement::Rounded { .. }))),
        "{off_edge:?}"
    );
    let loss_off = check(&out(&|i, r| {
        if i == 1 {
            r[0] *= 1.0 + 16.0 / 16_777_216.0
        }
    }));
    assert!(
        matches!(loss_off, Err((1, Disagreement::Rounded { .. }))),
        "{loss_off:?}"
    );
    let unwritten = check(&out(&|i, r| {
        if i == 1 {
            r[2] = f32::NAN
        }
    }));
    assert!(
        matches!(unwritten, Err((1, Disagreement::Rounded { .. }))),
        "{unwritten:?}"
    );

    // P3O-V1 with rho1 = exp(1/4) and 1 + eps = exp(1/4) as float64 rounds
    // it: rho1 is on the edge (either gradient passes), rho2 = 1 is not.
    let h1 = Hyper {
        epsilon: 0.25f64.exp() - 1.0,
        ..h
    };
    let x1 = PairInputs {
        lp: [vec![-1.75f32], vec![-3.0]],
        lp_old: [vec![-2.0f32], vec![-3.0]],
        lp_ref: [vec![-2.5f32], vec![-2.0]],
        reward: [vec![1.5], vec![-0.5]],
    };
    let c1 = PairConsts {
        reward: [1.5, -0.5],
        lp_old: [-2.0, -3.0],
        lp_ref: [-2.5, -2.0],
    };
    let w1 = pair_loss(
        Algorithm::P3oV1,
        &h1,
        &c1,
        PairVars {
            lp: [-1.75, -3.0],
            value: 0.0,
        },
    );
    let g = w1.grad.lp.map(|g| g as f32);
    assert!(g[0] != 0.0 && g[1] != 0.0, "{g:?}");
    let check1 = |g: [f32; 2]| {
        let out = PairOutputs {
            loss: vec![w1.loss as f32],
            grad: [vec![g[0]], vec![g[1]]],
        };
        compare::check_pairs(Algorithm::P3oV1, &h1, &x1, &out)
    };
    assert_eq!(check1(g), Ok(()));
    assert_eq!(check1([0.0, g[1]]), Ok(()));
    assert!(matches!(
        check1([g[0], 0.0]),
        Err((0, Disagreement::Rounded { .. }))
    ));

    // GAE over one sequence of 3 (the last token masked).
    let (r, v, m) = ([1.0f32, -0.5, 2.0], [0.25f32, 0.5, 4.0], [1.0f32, 1.0, 0.0]);
    let wide = |x: &[f32]| x.iter().map(|&e| f64::from(e)).collect::<Vec<_>>();
    let (adv, ret) = gae(&wide(&r), &wide(&v), &wide(&m), 0.99, 0.95);
    let narrow = |x: &[f64]| x.iter().map(|&e| e as f32).collect::<Vec<_>>();
    let (adv, ret) = (narrow(&adv), narrow(&ret));
    let check = |adv: &[f32], ret: &[f32]| {
        compare::check_gae((&r, &v, &m), (0.99, 0.95), 3, GaeOutputs { adv, ret })
    };
    assert_eq!(check(&adv, &ret), Ok(()));
    let mut bad = adv.clone();
    bad[0] *= 1.0 + 16.0 / 16_777_216.0;
    assert!(matches!(check(&bad, &ret), Err(((0, 0), _))));
    let mut bad = ret.clone();
    bad[2] = f32::NAN;
    assert!(matches!(check(&adv, &bad), Err(((0, 2), _))));
}

/// fwd and bwd of the token kernels over `shapes` ((V, N) pairs), logits of
/// scale 3 and 1e4 and masked logits, against the reference.
fn check_token<B: Backend, T: HostLogitElement>(
    b: &B,
    shapes: &[(usize, usize)],
    seed: u64,
    quantise: impl Fn(f32) -> T,
    grad_tol: GradTolerance,
) {
    for (i, &(v, n)) in shapes.iter().enumerate() {
        for (scale, masked) in [(3.0f32, false), (1e4, false), (3.0, true)] {
            let (logits, targets, g) =
                token_inputs(n, v, scale, masked, seed + i as u64, &quantise);
            let out = b
                .token(&logits, &targets, &g, v, quantise(f32::NAN))
                .unwrap();
            let ctx = format!("V={v} N={n} scale={scale} masked={masked}");
            check_token_outputs(&ctx, &logits, &targets, &g, v, out, grad_tol);
        }
    }
}

/// (V, N) of the device's token cases: every V of the issue, N up to 32768.
const TOKEN_SHAPES: [(usize, usize); 5] = [
    (1, 32768),
    (7, 32768),
    (1000, 32768),
    (50257, 512),
    (128256, 256),
];

/// The same V on the host, with fewer rows (a block costs milliseconds
/// there); 16 rows of V = 7 start at every offset a row can have within 16
/// bytes (4 for float32, 8 for bfloat16).
const HOST_TOKEN_SHAPES: [(usize, usize); 5] =
    [(1, 16), (7, 16), (1000, 8), (50257, 3), (128256, 2)];

// spec: C-TOKEN-LOGPROB
#[test]
fn token_logprob_f32_matches_reference() {
    let Some(gpu) = gpu() else { return };
    check_token::<_, f32>(&gpu, &TOKEN_SHAPES, 100, |x| x, F32_GRAD);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn token_logprob_bf16_matches_reference() {
    let Some(gpu) = gpu() else { return };
    check_token(&gpu, &TOKEN_SHAPES, 200, Bf16::from_f32, BF16_GRAD);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn host_token_logprob_f32_matches_reference() {
    check_token::<_, f32>(&Host, &HOST_TOKEN_SHAPES, 100, |x| x, F32_GRAD);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn host_token_logprob_bf16_matches_reference() {
    check_token(&Host, &HOST_TOKEN_SHAPES, 200, Bf16::from_f32, BF16_GRAD);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        ..common::config("tests/proptest-regressions/cuda_kernels.txt")
    })]

    /// Any row in the clause's domain: masked entries, ties, magnitudes of
    /// 1e30, every length up to 300 (so every head and tail split).
    // spec: C-TOKEN-LOGPROB
    #[test]
    fn host_token_kernels_hold_on_any_row((v, logits, targets) in common::logit_rows()) {
        check_host_token_rows(v, &logits, &targets);
    }

    /// Rows long enough for the forward's warp loop in both dtypes (four
    /// float32 or three bf16 16-byte loads per lane; V > 4400 runs it in
    /// both), with many ties: its chunks take both the exact and the
    /// branch-free path, and most lanes do not hold the warp's maximum.
    // spec: C-TOKEN-LOGPROB
    #[test]
    fn host_token_kernels_hold_on_long_rows(
        (v, logits, targets) in common::rows_of(6145..=9000, 1..=1, common::clustered_logit())
    ) {
        check_host_token_rows(v, &logits, &targets);
    }
}

/// Why a decoded sequence case leaves [C-F64-KERNELS]'s domain, if it does.
fn outside_f64_domain(case: &SequenceCase) -> Option<String> {
    let bounded = |x: &[f32], max: f32| x.iter().all(|v| v.is_finite() && v.abs() <= max);
    let zero_one = |m: &[f32]| m.iter().all(|&v| v == 0.0 || v == 1.0);
    let unit = |x: f64| (0.0..=1.0).contains(&x);
    match case {
        SequenceCase::Pairs {
            beta, epsilon, x, ..
        } => {
            let logs = [&x.lp, &x.lp_old, &x.lp_ref];
            let steps = (0..2).all(|k| {
                x.lp[k]
                    .iter()
                    .zip(&x.lp_old[k])
                    .all(|(a, b)| (a - b).abs() <= 17.0)
            });
            let rewards = x.reward.iter().flatten().all(|r| r.abs() <= 16_777_216.0);
            let coefs = (0.0..=64.0).contains(beta)
                && ((0.0..=64.0).contains(epsilon) || *epsilon == f64::INFINITY);
            let ok = logs.iter().all(|p| p.iter().all(|v| bounded(v, 65_536.0)))
                && steps
                && rewards
                && coefs;
            (!ok).then(|| format!("pairs: steps {steps}, rewards {rewards}, coefficients {coefs}"))
        }
        SequenceCase::SeqSum { a, c, mask, .. } => {
            let max = 18_446_744_073_709_551_616.0;
            let ok =
                bounded(a, max) && c.as_ref().is_none_or(|c| bounded(c, max)) && zero_one(mask);
            (!ok).then(|| "sequence sum".to_string())
        }
        SequenceCase::Gae {
            t_len,
            rewards,
            values,
            mask,
            gamma,
            lambda,
        } => {
            let max = 4_294_967_296.0;
            let right_padded = mask
                .chunks(*t_len)
                .all(|row| row.windows(2).all(|w| w[0] >= w[1]));
            let ok = bounded(rewards, max)
                && bounded(values, max)
                && zero_one(mask)
                && right_padded
                && unit(*gamma)
                && unit(*lambda);
            (!ok).then(|| {
                format!("GAE: right-padded {right_padded}, gamma {gamma}, lambda {lambda}")
            })
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..common::config("tests/proptest-regressions/cuda_kernels.txt")
    })]

    /// Whatever the bytes, a decoded sequence case lies in the domain its
    /// tolerance is stated for, so a fuzz failure is never the decoder's.
    // spec: C-F64-KERNELS
    #[test]
    fn sequence_cases_stay_in_the_domain(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(case) = SequenceCase::from_bytes(&bytes) {
            prop_assert_eq!(outside_f64_domain(&case), None);
        }
    }

    /// Likewise for token cases and [C-TOKEN-LOGPROB]: finite logits of
    /// magnitude at most 2^126 or -inf, each target's logit finite, and
    /// upstream gradients 0 or of magnitude in [2^-20, 2^21).
    // spec: C-TOKEN-LOGPROB
    #[test]
    fn token_cases_stay_in_the_domain(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(case) = TokenCase::from_bytes(&bytes) {
            let max = 2f32.powi(126);
            prop_assert!(case
                .logits
                .iter()
                .all(|x| *x == f32::NEG_INFINITY || (x.is_finite() && x.abs() <= max)));
            for (r, &t) in case.targets.iter().enumerate() {
                prop_assert!((0..case.v as i64).contains(&t));
                prop_assert!(case.logits[r * case.v + t as usize].is_finite());
            }
            let g_ok = |g: f32| g == 0.0 || (2f32.powi(-20)..2f32.powi(21)).contains(&g.abs());
            prop_assert!(case.g.iter().all(|&g| g_ok(g)), "{:?}", case.g);
        }
    }
}

/// How many seeds and crash files of each kernel fuzz target are committed:
/// a replay that reaches fewer has lost some (a moved folder, a file that no
/// longer decodes).
const TOKEN_FUZZ_FILES: FuzzFiles = FuzzFiles {
    seeds: 16,
    crashes: 1,
};
const SEQUENCE_FUZZ_FILES: FuzzFiles = FuzzFiles {
    seeds: 20,
    crashes: 1,
};

/// Counts of a fuzz target's committed inputs.
#[derive(Debug, Default, PartialEq)]
struct FuzzFiles {
    seeds: usize,
    crashes: usize,
}

/// The committed seeds and crash files of fuzz target `target`
/// (`fuzz/seeds/<target>`, `fuzz/regressions/<target>`), each with whether
/// it is a seed.
fn fuzz_cases(target: &str) -> Vec<(PathBuf, bool)> {
    // The source tree, or (for a test binary carried to another machine and
    // run from a copy of the repository's root) the working directory.
    let mut root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    if !root.is_dir() {
        root = PathBuf::from("fuzz");
    }
    let mut cases = vec![];
    for dir in ["seeds", "regressions"] {
        let folder = root.join(dir).join(target);
        let entries =
            std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        for path in entries.map(|e| e.unwrap().path()) {
            if path.extension().is_none_or(|e| e != "md") {
                cases.push((path, dir == "seeds"));
            }
        }
    }
    cases.sort();
    cases
}

/// Replays every committed input of fuzz target `target` through `check`
/// (which must decode it: a committed input that no longer decodes is a
/// failure) and asserts that at least the committed counts were replayed.
fn replay_fuzz_cases(target: &str, committed: FuzzFiles, check: impl Fn(&Path, &[u8])) {
    let mut replayed = FuzzFiles::default();
    for (path, seed) in fuzz_cases(target) {
        check(&path, &std::fs::read(&path).unwrap());
        if seed {
            replayed.seeds += 1;
        } else {
            replayed.crashes += 1;
        }
    }
    assert!(
        replayed.seeds >= committed.seeds && replayed.crashes >= committed.crashes,
        "{target}: replayed {replayed:?}, but {committed:?} are committed"
    );
}

/// The fuzz target `host_token_kernels`'s seeds and crash files, replayed
/// on `b`: each decoded case agrees with the reference.
fn check_fuzz_cases<B: Backend>(b: &B) {
    replay_fuzz_cases("host_token_kernels", TOKEN_FUZZ_FILES, |path, bytes| {
        let case = TokenCase::from_bytes(bytes)
            .unwrap_or_else(|e| panic!("{}: does not decode: {e}", path.display()));
        let (v, t, g) = (case.v, &case.targets, &case.g);
        let ctx = path.display().to_string();
        if case.bf16 {
            let x: Vec<Bf16> = case.logits.iter().map(|&x| Bf16::from_f32(x)).collect();
            let out = b.token(&x, t, g, v, Bf16::from_f32(f32::NAN)).unwrap();
            check_token_outputs(&ctx, &x, t, g, v, out, BF16_GRAD);
        } else {
            let out = b.token(&case.logits, t, g, v, f32::NAN).unwrap();
            check_token_outputs(&ctx, &case.logits, t, g, v, out, F32_GRAD);
        }
    });
}

/// The fuzz target `host_sequence_kernels`'s seeds and crash files,
/// replayed on `b`.
fn check_sequence_fuzz_cases<B: Backend>(b: &B) {
    replay_fuzz_cases(
        "host_sequence_kernels",
        SEQUENCE_FUZZ_FILES,
        |path, bytes| {
            let case = SequenceCase::from_bytes(bytes)
                .unwrap_or_else(|e| panic!("{}: does not decode: {e}", path.display()));
            if let Err(e) = case.check(b) {
                panic!("{}: {e}", path.display());
            }
        },
    );
}

// spec: C-F64-KERNELS C-P3O-V1 C-P3O-V2 C-DPO C-SEQ-LOGPROB C-GAE
#[test]
fn sequence_fuzz_cases_replay() {
    let Some(gpu) = gpu() else { return };
    check_sequence_fuzz_cases(&gpu);
}

// spec: C-F64-KERNELS C-P3O-V1 C-P3O-V2 C-DPO C-SEQ-LOGPROB C-GAE
#[test]
fn host_sequence_fuzz_cases_replay() {
    check_sequence_fuzz_cases(&Host);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn token_fuzz_cases_replay() {
    let Some(gpu) = gpu() else { return };
    check_fuzz_cases(&gpu);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn host_token_fuzz_cases_replay() {
    check_fuzz_cases(&Host);
}

/// The host execution of the token kernels on `logits` in float32 and in
/// bfloat16, against the reference.
fn check_host_token_rows(v: usize, logits: &[f32], targets: &[i64]) {
    let g: Vec<f32> = (0..targets.len()).map(|r| 1.0 - r as f32 * 0.75).collect();
    let out = Host.token(logits, targets, &g, v, f32::NAN).unwrap();
    check_token_outputs("f32", logits, targets, &g, v, out, F32_GRAD);
    let logits: Vec<Bf16> = logits.iter().map(|&x| Bf16::from_f32(x)).collect();
    let nan = Bf16::from_f32(f32::NAN);
    let out = Host.token(&logits, targets, &g, v, nan).unwrap();
    check_token_outputs("bf16", &logits, targets, &g, v, out, BF16_GRAD);
}

/// Rows whose target holds all but a sliver of the mass, every other logit
/// 87.5 to 88.5 below it: each of their terms is under float32's normal
/// range (2^-126), but their sum (about 8e-34) is not, and it is the
/// target's gradient g (1 - p_t). The thread that meets the target first
/// measures its later elements from it, so a forward that flushed subnormal
/// terms to zero would lose that thread's ~500 terms, four times the
/// gradient check's floor.
fn check_subnormal_terms<B: Backend, T: HostLogitElement>(
    b: &B,
    quantise: impl Fn(f32) -> T,
    grad_tol: GradTolerance,
) {
    let v = 128256;
    let targets: Vec<i64> = vec![0, 64001];
    let mut logits = Vec::with_capacity(targets.len() * v);
    for &t in &targets {
        // Gaps 87.5, 88 and 88.5, exact in bfloat16 too.
        let gap = |i: i64| 87.5 + 0.5 * (i % 3) as f32;
        logits.extend((0..v as i64).map(|i| quantise(if i == t { 3.0 } else { 3.0 - gap(i) })));
    }
    let g = vec![1.0f32, -0.5];
    let out = b
        .token(&logits, &targets, &g, v, quantise(f32::NAN))
        .unwrap();
    check_token_outputs("subnormal terms", &logits, &targets, &g, v, out, grad_tol);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn token_logprob_keeps_subnormal_terms() {
    let Some(gpu) = gpu() else { return };
    check_subnormal_terms::<_, f32>(&gpu, |x| x, F32_GRAD);
    check_subnormal_terms(&gpu, Bf16::from_f32, BF16_GRAD);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn host_token_logprob_keeps_subnormal_terms() {
    check_subnormal_terms::<_, f32>(&Host, |x| x, F32_GRAD);
    check_subnormal_terms(&Host, Bf16::from_f32, BF16_GRAD);
}

/// Logits and gradient rows at different 16-byte offsets (a view of a
/// tensor can start anywhere): the backward's scalar path.
// spec: C-TOKEN-LOGPROB
#[test]
fn host_token_logprob_bwd_with_unequally_aligned_rows() {
    let (v, n) = (1003, 5);
    let (padded, targets, g) = token_inputs(n, v + 1, 3.0, false, 300, |x| x);
    let logits = &padded[1..=n * v];
    let (mut logp, mut lse) = (nans(n), nans(2 * n));
    Host.token_logprob_fwd(logits, &targets, v, &mut logp, &mut lse)
        .unwrap();
    let mut grad = nans(n * v);
    assert_ne!(
        (logits.as_ptr() as usize ^ grad.as_ptr() as usize) % 16,
        0,
        "the case must misalign the rows"
    );
    Host.token_logprob_bwd(logits, &targets, &lse, &g, v, &mut grad)
        .unwrap();
    let out = (logp, lse, grad);
    check_token_outputs("unaligned", logits, &targets, &g, v, out, F32_GRAD);
}

/// Masked sums over `[B, T]` shapes, with and without a subtrahend.
fn check_seq_sum<B: Backend>(backend: &B, shapes: &[(usize, usize)]) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for &(b, t_len) in shapes {
        let a: Vec<f32> = (0..b * t_len)
            .map(|_| -10.0 * rng.random::<f32>())
            .collect();
        let c: Vec<f32> = (0..b * t_len)
            .map(|_| -10.0 * rng.random::<f32>())
            .collect();
        let mask: Vec<f32> = (0..b)
            .flat_map(|_| {
                let len = rng.random_range(0..=t_len);
                (0..t_len).map(move |t| f32::from(u8::from(t < len)))
            })
            .collect();
        for with_c in [false, true] {
            let c = with_c.then_some(&c[..]);
            let out = backend.seq_sum(&a, c, &mask, t_len).unwrap();
            if let Err((row, e)) = compare::check_seq_sums(&a, c, &mask, t_len, &out) {
                panic!("[{b}, {t_len}] row {row}: {e}");
            }
        }
    }
}

// spec: C-SEQ-LOGPROB
#[test]
fn masked_seq_sum_matches_reference() {
    let Some(gpu) = gpu() else { return };
    check_seq_sum(&gpu, &[(1, 1), (37, 129), (512, 1024)]);
}

// spec: C-SEQ-LOGPROB
#[test]
fn host_masked_seq_sum_matches_reference() {
    check_seq_sum(&Host, &[(1, 1), (37, 129), (16, 1024)]);
}

/// `n` random pairs, steps up to +-0.6 in log-ratio: well past the clip band
/// on both sides.
fn pair_inputs(n: usize) -> PairInputs<Vec<f32>, Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut u = |lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
    let mut lp_old = [vec![], vec![]];
    let mut lp = [vec![], vec![]];
    let mut lp_ref = [vec![], vec![]];
    let mut reward = [vec![], vec![]];
    for _ in 0..n {
        for k in 0..2 {
            let old = u(-60.0, -1.0) as f32;
            lp_old[k].push(old);
            lp[k].push(old + u(-0.6, 0.6) as f32);
            lp_ref[k].push(u(-60.0, -1.0) as f32);
            reward[k].push(u(-5.0, 5.0));
        }
    }
    PairInputs {
        lp,
        lp_old,
        lp_ref,
        reward,
    }
}

/// The three pair losses, with clipping and without, against the reference.
fn check_pairs<B: Backend>(backend: &B, n: usize) {
    let x = pair_inputs(n);
    for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo] {
        for h in [
            Hyper {
                beta: 0.05,
                epsilon: 0.2,
                vf_coef: 1.0,
                ..Hyper::default()
            },
            Hyper {
                beta: 0.5,
                epsilon: f64::INFINITY,
                vf_coef: 1.0,
                ..Hyper::default()
            },
        ] {
            let out = backend.pairs(alg, &x, h.beta, h.epsilon).unwrap();
            if let Err((i, e)) = compare::check_pairs(alg, &h, &x, &out) {
                panic!("{alg} eps={} pair {i}: {e}", h.epsilon);
            }
            // The kernel's zero gradients, now known to be the reference's.
            let clipped = (0..n)
                .filter(|&i| out.grad[0][i] == 0.0 || out.grad[1][i] == 0.0)
                .count();
            if alg != Algorithm::Dpo && h.epsilon.is_finite() {
                assert!(
                    clipped > n / 10,
                    "{alg}: only {clipped} of {n} pairs had clipping active"
                );
            }
        }
    }
}

// spec: C-P3O-V1 C-P3O-V2 C-DPO C-CLIP
#[test]
fn pair_losses_match_reference() {
    let Some(gpu) = gpu() else { return };
    check_pairs(&gpu, 50_000);
}

// spec: C-P3O-V1 C-P3O-V2 C-DPO C-CLIP
#[test]
fn host_pair_losses_match_reference() {
    check_pairs(&Host, 5_000);
}

/// GAE over `b` sequences of `t_len` with random lengths.
fn check_gae<B: Backend>(backend: &B, b: usize, t_len: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let r: Vec<f32> = (0..b * t_len).map(|_| rng.random::<f32>() - 0.5).collect();
    let v: Vec<f32> = (0..b * t_len)
        .map(|_| 2.0 * rng.random::<f32>() - 1.0)
        .collect();
    let m: Vec<f32> = (0..b)
        .flat_map(|_| {
            let len = rng.random_range(1..=t_len);
            (0..t_len).map(move |t| f32::from(u8::from(t < len)))
        })
        .collect();
    let (gamma, lambda) = (0.99, 0.95);
    let (adv, ret) = backend.gae(&r, &v, &m, gamma, lambda, t_len).unwrap();
    let out = GaeOutputs {
        adv: &adv,
        ret: &ret,
    };
    if let Err(((b, t), e)) = compare::check_gae((&r, &v, &m), (gamma, lambda), t_len, out) {
        panic!("sequence {b}, token {t}: {e}");
    }
}

// spec: C-GAE
#[test]
fn gae_matches_reference() {
    let Some(gpu) = gpu() else { return };
    check_gae(&gpu, 1000, 300);
}

// spec: C-GAE
#[test]
fn host_gae_matches_reference() {
    check_gae(&Host, 300, 300);
}

/// Bad shapes are errors, not launches; an out-of-range target gives NaN,
/// never an out-of-bounds read.
fn check_launch_shapes<B: Backend>(backend: &B) {
    let err = backend.token(&[0.0f32; 10], &[0i64; 3], &[0.0; 3], 4, f32::NAN);
    assert!(matches!(err, Err(CudaError::Input(_))), "{err:?}");
    let (logp, _, grad) = backend
        .token(&[0.0f32; 8], &[1i64, 9], &[1.0, 1.0], 4, f32::NAN)
        .unwrap();
    assert!(
        (logp[0] + 4f32.ln()).abs() < 1e-6 && logp[1].is_nan(),
        "{logp:?}"
    );
    // Row 1's gradient is -softmax everywhere: no element is the target.
    assert!(
        grad[4..].iter().all(|&x| (x + 0.25).abs() < 1e-6),
        "{grad:?}"
    );
    let err = backend.pairs(Algorithm::Ppo, &pair_inputs(3), 0.1, 0.2);
    assert!(
        matches!(err, Err(CudaError::Input(_))),
        "PPO has no pair kernel"
    );
}

// spec: C-TOKEN-LOGPROB
#[test]
fn launch_checks_shapes() {
    let Some(gpu) = gpu() else { return };
    check_launch_shapes(&gpu);
}

// spec: C-TOKEN-LOGPROB
#[test]
fn host_launch_checks_shapes() {
    check_launch_shapes(&Host);
}
