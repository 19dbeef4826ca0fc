//! The tch language-model stack against HF transformers (fixtures made by
//! tests/fixtures/make_fixtures.py), and against itself (cache vs none).
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};

use p3o::tolerance::{CACHE_VS_RECOMPUTE, HF_F32};
use p3o::torch::generate::{GenerateOptions, generate, left_pad};
use p3o::torch::logprobs::next_token_logprobs;
use p3o::torch::model::positions_from_mask;
use p3o::torch::reward::rewards;
use p3o::torch::{Head, LanguageModel, TorchError};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// A committed fixture model: in the source tree, or (for a test binary
/// carried to a GPU machine and run from a copy of the repository's root)
/// under the working directory.
fn fixture(name: &str) -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    if !dir.is_dir() {
        dir = PathBuf::from("tests/fixtures/models");
    }
    dir.join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

/// HF's logits `[t, V]` for prompt `i` of a fixture's expectations.
fn expected_logits(exp: &Value, i: usize) -> Tensor {
    let rows = exp["logits"][i].as_array().unwrap();
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn ids_of(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn load(name: &str, head: Head) -> LanguageModel {
    LanguageModel::load(&fixture(name), head, Device::Cpu, Kind::Float).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn greedy(eos: i64, max_new: i64) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: max_new,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_token_ids: vec![eos],
        pad_token_id: eos,
        use_cache: true,
        logprobs: true,
    }
}

/// Logits and greedy continuations of every causal-LM fixture equal HF's,
/// `neox-odd-rotary` included: a head of 12 channels with `rotary_pct`
/// 0.25 has `r = 3` rotary dimensions, which HF rotates as 4 channels
/// (pairs `(0, 2)` and `(1, 3)`) with frequencies `base^(-2i / 3)`.
// spec: C-TOKEN-LOGPROB
#[test]
fn causal_lms_match_transformers() {
    for name in [
        "neox-parallel",
        "neox-serial",
        "gpt2",
        "neox-sharded",
        "neox-bf16",
        "neox-odd-rotary",
        "llama",
        "llama-tied-llama3",
        "mistral",
        "qwen2",
        "qwen3",
        "gptj",
    ] {
        let model = load(name, Head::Lm);
        let exp = expected(name);
        let eos = model.config.eos_token_id.unwrap();
        for (i, prompt) in exp["prompt_ids"].as_array().unwrap().iter().enumerate() {
            let prompt = ids_of(prompt);
            let want = expected_logits(&exp, i);
            let err = max_abs_diff(&common::logits(&model, &prompt), &want);
            assert!(
                err <= HF_F32,
                "{name} prompt {i}: max |logits - HF| = {err}"
            );
            let g = generate(&model, &[prompt], &greedy(eos, 12)).unwrap();
            assert_eq!(
                g.response_ids[0],
                ids_of(&exp["greedy_ids"][i]),
                "{name} prompt {i}: greedy continuation"
            );
        }
    }
}

/// Rewards at the last non-padding token of right-padded batches equal HF's.
#[test]
fn reward_models_match_transformers() {
    for name in [
        "neox-reward",
        "gpt2-reward",
        "llama-reward",
        "qwen2-reward",
        "gptj-reward",
    ] {
        let model = load(name, Head::Score);
        let exp = expected(name);
        let rows: Vec<Vec<i64>> = exp["ids"].as_array().unwrap().iter().map(ids_of).collect();
        let width = rows.iter().map(Vec::len).max().unwrap();
        let pad = model.config.pad_token_id.unwrap();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, width - r.len()))
            })
            .collect();
        let mask: Vec<i64> = rows
            .iter()
            .flat_map(|r| {
                std::iter::repeat_n(1, r.len()).chain(std::iter::repeat_n(0, width - r.len()))
            })
            .collect();
        let shape = [rows.len() as i64, width as i64];
        let got = rewards(
            &model,
            &Tensor::from_slice(&ids).view(shape),
            &Tensor::from_slice(&mask).view(shape),
        )
        .unwrap();
        let want: Vec<f32> = exp["rewards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let err = max_abs_diff(&got, &Tensor::from_slice(&want));
        assert!(err <= HF_F32, "{name}: max |reward - HF| = {err}");
        // Left padding gives the same rewards: positions follow the mask.
        let (lids, lmask) = left_pad(&rows, pad, Device::Cpu);
        let left = rewards(&model, &lids, &lmask).unwrap();
        assert!(
            max_abs_diff(&left, &got) <= HF_F32,
            "{name}: left padding changes the reward"
        );
    }
}

/// Every causal-LM fixture of a family other than GPT-NeoX and GPT-2.
const NEW_FAMILIES: [&str; 6] = [
    "llama",
    "llama-tied-llama3",
    "mistral",
    "qwen2",
    "qwen3",
    "gptj",
];

/// Cached generation of a left-padded batch gives the same tokens and
/// log-probs as recomputing the whole sequence each step, and those
/// log-probs are the model's log-probs of the sampled tokens. Mistral's
/// window is 8 keys and its sequences reach 23 tokens: decoding steps
/// read only the window's keys from the cache.
// spec: C-SEQ-LOGPROB C-SHARED-PREFIX
#[test]
fn cached_generation_equals_recomputation() {
    for name in ["neox-parallel", "gpt2"].into_iter().chain(NEW_FAMILIES) {
        let model = load(name, Head::Lm);
        let eos = model.config.eos_token_id.unwrap();
        let prompts: Vec<Vec<i64>> = expected(name)["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids_of)
            .collect();
        let sampled = GenerateOptions {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(0.95),
            seed: 7,
            eos_token_ids: Vec::new(),
            ..greedy(eos, 10)
        };
        let cached = generate(&model, &prompts, &sampled).unwrap();
        let plain = generate(
            &model,
            &prompts,
            &GenerateOptions {
                use_cache: false,
                ..sampled.clone()
            },
        )
        .unwrap();
        assert_eq!(cached.response_ids, plain.response_ids, "{name}: tokens");
        for (a, b) in cached
            .token_logprobs
            .iter()
            .flatten()
            .zip(plain.token_logprobs.iter().flatten())
        {
            assert!(
                (a - b).abs() as f64 <= CACHE_VS_RECOMPUTE,
                "{name}: log-prob {a} vs {b}"
            );
        }
        // The same seed gives the same sample.
        assert_eq!(generate(&model, &prompts, &sampled).unwrap(), cached);
        // Runs of equal prompts (a group's responses) share one prefill
        // ([C-SHARED-PREFIX]): the same as recomputing every row whole.
        let repeated: Vec<Vec<i64>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), 3))
            .collect();
        let grouped = generate(&model, &repeated, &sampled).unwrap();
        let whole = generate(
            &model,
            &repeated,
            &GenerateOptions {
                use_cache: false,
                ..sampled.clone()
            },
        )
        .unwrap();
        assert_eq!(
            grouped.response_ids, whole.response_ids,
            "{name}: grouped tokens"
        );
        for (a, b) in grouped
            .token_logprobs
            .iter()
            .flatten()
            .zip(whole.token_logprobs.iter().flatten())
        {
            assert!(
                (a - b).abs() as f64 <= CACHE_VS_RECOMPUTE,
                "{name}: grouped log-prob {a} vs {b}"
            );
        }
        // Without log-probs: the same tokens, empty log-prob rows.
        let ids_only = generate(
            &model,
            &prompts,
            &GenerateOptions {
                logprobs: false,
                ..sampled.clone()
            },
        )
        .unwrap();
        assert_eq!(
            ids_only.response_ids, cached.response_ids,
            "{name}: ids only"
        );
        assert!(ids_only.token_logprobs.iter().all(Vec::is_empty));
        // Scoring prompt + response with one forward pass agrees.
        for (r, prompt) in prompts.iter().enumerate() {
            let full: Vec<i64> = prompt
                .iter()
                .chain(&cached.response_ids[r])
                .copied()
                .collect();
            let x = Tensor::from_slice(&full).unsqueeze(0);
            let lp = next_token_logprobs(&model, &x, &x.ones_like())
                .unwrap()
                .squeeze_dim(0);
            let resp = lp.narrow(
                0,
                prompt.len() as i64 - 1,
                cached.response_ids[r].len() as i64,
            );
            let got = Vec::<f32>::try_from(&resp).unwrap();
            for (a, b) in got.iter().zip(&cached.token_logprobs[r]) {
                assert!(
                    (a - b).abs() as f64 <= CACHE_VS_RECOMPUTE,
                    "{name} row {r}: scored {a} vs sampled {b}"
                );
            }
        }
    }
}

/// Saving writes HF layout that loads back to identical logits.
#[test]
fn save_and_reload_round_trip() {
    let model = load("neox-serial", Head::Lm);
    // Kept under the target directory so that it can be opened with HF
    // transformers by hand.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("saved-neox-serial");
    model.save(&dir).unwrap();
    let again = LanguageModel::load(&dir, Head::Lm, Device::Cpu, Kind::Float).unwrap();
    let prompt = [5i64, 17, 42, 99];
    assert_eq!(
        max_abs_diff(
            &common::logits(&model, &prompt),
            &common::logits(&again, &prompt)
        ),
        0.0
    );
}

/// Bad checkpoints are clear errors naming the tensor, file or field.
#[test]
fn checkpoint_errors() {
    let err =
        |r: Result<LanguageModel, TorchError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!("p3o-bad-{}", std::process::id()));
    let load_tmp = || LanguageModel::load(&tmp, Head::Lm, Device::Cpu, Kind::Float);
    std::fs::create_dir_all(&tmp).unwrap();
    // A reward checkpoint has no LM head.
    let e = err(LanguageModel::load(
        &fixture("neox-reward"),
        Head::Lm,
        Device::Cpu,
        Kind::Float,
    ));
    assert!(
        e.contains("embed_out.weight") && e.contains("missing"),
        "{e}"
    );
    // A config that disagrees with the weights.
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("neox-parallel").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["vocab_size"] = 321.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture("neox-parallel").join("model.safetensors"),
        tmp.join("model.safetensors"),
    )
    .unwrap();
    let e = err(load_tmp());
    // Tensors are checked in name order, so the untied head comes first.
    assert!(
        e.contains("tensor `embed_out.weight`")
            && e.contains("[320, 32]")
            && e.contains("[321, 32]"),
        "{e}"
    );
    // Corrupt weights.
    cfg["vocab_size"] = 320.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"not a safetensors file").unwrap();
    let e = err(load_tmp());
    assert!(e.contains("corrupt safetensors"), "{e}");
    // An unsupported architecture: named, with the supported list.
    cfg["model_type"] = "mamba".into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let e = err(load_tmp());
    assert!(
        e.contains("unsupported model: model_type `mamba`")
            && e.contains("gpt_neox, gpt2, gptj, llama, mistral, qwen2, qwen3"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
    // Prompts too long for the positions, and unknown token ids.
    let model = load("gpt2", Head::Lm);
    let e = generate(&model, &[vec![1; 60]], &greedy(0, 8))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceed") && e.contains("64 positions"), "{e}");
    let e = generate(&model, &[vec![1, 9999]], &greedy(0, 8))
        .unwrap_err()
        .to_string();
    assert!(e.contains("9999"), "{e}");
}

/// Max |logits - HF| of every causal-LM fixture on `device` in `kind`.
fn worst_logit_error(device: Device, kind: Kind) -> f64 {
    let mut worst = 0.0f64;
    for name in ["neox-parallel", "neox-serial", "gpt2"]
        .into_iter()
        .chain(NEW_FAMILIES)
    {
        let model = LanguageModel::load(&fixture(name), Head::Lm, device, kind).unwrap();
        let exp = expected(name);
        for (i, prompt) in exp["prompt_ids"].as_array().unwrap().iter().enumerate() {
            let prompt = ids_of(prompt);
            let want = expected_logits(&exp, i);
            let x = Tensor::from_slice(&prompt).unsqueeze(0).to_device(device);
            let mask = x.ones_like();
            let got = model
                .logits(
                    &model
                        .hidden(&x, &positions_from_mask(&mask), &mask, None)
                        .unwrap(),
                )
                .unwrap();
            let got = got
                .squeeze_dim(0)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu);
            worst = worst.max(max_abs_diff(&got, &want));
        }
    }
    worst
}

/// bfloat16 compute on the CPU stays within the stated bf16 bound.
#[test]
fn bf16_on_cpu_within_bound() {
    let err = worst_logit_error(Device::Cpu, Kind::BFloat16);
    println!("bf16 on cpu: max |logits - HF f32| = {err}");
    assert!(err <= p3o::tolerance::HF_BF16, "{err}");
}

/// On a CUDA device the same checks pass in float32 and bfloat16.
#[test]
fn cuda_models_match_transformers() {
    if !tch::Cuda::is_available() {
        common::skip_without_gpu("no CUDA device (libtorch sees none)");
        return;
    }
    let f32_err = worst_logit_error(Device::Cuda(0), Kind::Float);
    let bf16_err = worst_logit_error(Device::Cuda(0), Kind::BFloat16);
    println!("cuda: max |logits - HF| f32 {f32_err}, bf16 {bf16_err}");
    assert!(f32_err <= HF_F32, "f32 on cuda: {f32_err}");
    assert!(
        bf16_err <= p3o::tolerance::HF_BF16,
        "bf16 on cuda: {bf16_err}"
    );
}

/// The preallocated cache returns what concatenation would, also when it
/// must grow past its capacity.
#[test]
fn kv_cache_appends_and_grows() {
    let mut cache = p3o::torch::nn::KvCache::new(2, 2);
    let mut all_k: Vec<Tensor> = Vec::new();
    for step in 0..4 {
        let t = if step == 0 { 2 } else { 1 };
        let k = Tensor::randn([3, 2, t, 4], (Kind::Float, Device::Cpu));
        let v = &k * 2.0;
        all_k.push(k.shallow_clone());
        for layer in 0..2 {
            let (ck, cv) = cache
                .append(layer, k.shallow_clone(), v.shallow_clone())
                .unwrap();
            let want = Tensor::cat(&all_k, 2);
            assert_eq!(max_abs_diff(&ck, &want), 0.0);
            assert_eq!(max_abs_diff(&cv, &(&want * 2.0)), 0.0);
        }
        assert_eq!(cache.len(), all_k.iter().map(|k| k.size()[2]).sum::<i64>());
    }
}

/// A group's prompt run through the model once, its keys and values
/// repeated for each of its responses, gives the sequence log-probs and the
/// parameter gradients of running every prompt + response row whole: every
/// family (Mistral's 8-key window is crossed), prompts of different
/// lengths, groups of 3 whose responses differ in length, are all one token
/// long (no second pass) or at most two (a one-query second pass); through
/// libtorch's log-probs and through the float64 kernels' own backward.
// spec: C-SHARED-PREFIX
#[test]
fn shared_prefix_logprobs_equal_whole_rows() {
    use p3o::train::kernels::{Detached, Kernels, backward};
    use p3o::train::scoring::{
        groups_share_prompts, shared_prefix_logprobs, shared_prefix_sequence_logprobs,
        token_window_with,
    };
    const GROUP: usize = 3;
    let length_sets: [[[usize; GROUP]; 3]; 3] = [
        [[4, 1, 6], [7, 3, 2], [1, 1, 5]],
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
        [[2, 1, 2], [1, 2, 2], [2, 2, 1]],
    ];
    for name in ["neox-parallel", "neox-serial", "gpt2"]
        .into_iter()
        .chain(NEW_FAMILIES)
    {
        let model = load(name, Head::Lm);
        let vocab = model.config.vocab_size();
        let token = |i: usize| ((i * 7919 + 13) as i64) % vocab;
        let prompts: Vec<Vec<i64>> = [5usize, 2, 9]
            .iter()
            .enumerate()
            .map(|(p, &n)| (0..n).map(|i| token(100 * p + i)).collect())
            .collect();
        let rows: Vec<Vec<i64>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), GROUP))
            .collect();
        assert!(groups_share_prompts(&rows, GROUP), "{name}");
        assert!(
            !groups_share_prompts(&rows, 2),
            "{name}: groups of 2 mix prompts"
        );
        // A fixed weighting of the sequence log-probs, so that every row's
        // gradient counts with its own sign and size.
        let weights = Tensor::from_slice(&[0.7f32, -1.3, 0.4, 1.1, -0.2, 0.9, -0.8, 0.5, 1.6]);
        let params: Vec<Tensor> = model.vs.trainable_variables();
        let gradients = |sums: &Tensor, detached: Option<&Detached>| {
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            backward(&(sums * &weights).sum(Kind::Float), detached).unwrap();
            params.iter().map(|p| p.grad().copy()).collect::<Vec<_>>()
        };
        for lens in &length_sets {
            let responses: Vec<Vec<i64>> = lens
                .iter()
                .flatten()
                .enumerate()
                .map(|(r, &n)| (0..n).map(|i| token(1000 + 50 * r + i)).collect())
                .collect();
            for (label, kernels) in [
                ("torch", Kernels::TORCH),
                ("torch, head chunks of 3", Kernels::TORCH.with_head_chunk(3)),
                ("materialised", Kernels::MATERIALISED),
                ("reference", Kernels::REFERENCE),
            ] {
                let what = format!("{name} {lens:?} {label}");
                let (window, whole_detached) =
                    token_window_with(&model, None, &rows, &responses, &kernels).unwrap();
                let whole = window
                    .lp
                    .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
                let whole_grads = gradients(&whole, whole_detached.as_ref());
                let (shared, _, shared_detached) =
                    shared_prefix_logprobs(&model, &prompts, &responses, GROUP, &kernels).unwrap();
                let shared_grads = gradients(&shared, shared_detached.as_ref());
                let no_grad =
                    shared_prefix_sequence_logprobs(&model, &prompts, &responses, GROUP, &kernels)
                        .unwrap();
                let (a, b, c) = (
                    Vec::<f32>::try_from(&shared.detach()).unwrap(),
                    Vec::<f32>::try_from(&whole.detach()).unwrap(),
                    Vec::<f32>::try_from(&no_grad).unwrap(),
                );
                for r in 0..a.len() {
                    let tol = CACHE_VS_RECOMPUTE * (1.0 + f64::from(b[r].abs()));
                    assert!(
                        f64::from((a[r] - b[r]).abs()) <= tol,
                        "{what} row {r}: {} vs {}",
                        a[r],
                        b[r]
                    );
                    assert!(
                        f64::from((c[r] - b[r]).abs()) <= tol,
                        "{what} row {r}: no-grad {}",
                        c[r]
                    );
                }
                for (i, (s, w)) in shared_grads.iter().zip(&whole_grads).enumerate() {
                    let scale = w.abs().max().double_value(&[]);
                    let diff = (s - w).abs().max().double_value(&[]);
                    assert!(scale > 0.0, "{what} parameter {i}: no gradient at all");
                    assert!(
                        diff <= CACHE_VS_RECOMPUTE * scale,
                        "{what} parameter {i}: gradient differs by {diff:e} (largest entry {scale:e})"
                    );
                }
            }
        }
        // An empty prompt is an input error, not a panic.
        let empty = vec![vec![], prompts[1].clone(), prompts[2].clone()];
        let responses = vec![vec![1i64]; 3 * GROUP];
        assert!(
            shared_prefix_logprobs(&model, &empty, &responses, GROUP, &Kernels::TORCH).is_err()
        );
    }
}

/// Runs of equal consecutive prompts, what sampling prefills once.
#[test]
fn prompt_runs_find_the_groups() {
    use p3o::torch::generate::prompt_runs;
    let (a, b) = (vec![1i64, 2], vec![3i64]);
    let grouped = [
        a.clone(),
        a.clone(),
        b.clone(),
        b.clone(),
        b.clone(),
        a.clone(),
    ];
    assert_eq!(
        prompt_runs(&grouped),
        Some((vec![0, 2, 5], vec![0, 0, 1, 1, 1, 2]))
    );
    assert_eq!(prompt_runs(&[a.clone(), b.clone(), a]), None);
    assert_eq!(prompt_runs(&[]), None);
}

/// Activation checkpointing keeps only each layer's input and recomputes
/// the layers in the backward: the hidden states and a loss over them come
/// out bit for bit, and every parameter's gradient within 1e-6 of its
/// largest entry, for every family.
// spec: C-CHECKPOINTING
#[test]
fn checkpointed_gradients_equal_the_plain_pass() {
    let rows: Vec<Vec<i64>> = vec![vec![3, 9, 27, 4, 11, 6], vec![5, 2], vec![8, 1, 7, 30]];
    for name in ["neox-parallel", "neox-serial", "gpt2"]
        .into_iter()
        .chain(NEW_FAMILIES)
    {
        let model = load(name, Head::Lm);
        let (ids, valid) = left_pad(&rows, 0, Device::Cpu);
        let positions = positions_from_mask(&valid);
        let params = model.vs.trainable_variables();
        tch::manual_seed(11);
        let v = model.config.vocab_size();
        let weights = Tensor::randn([3, 6, v], (Kind::Float, Device::Cpu));
        let loss_of = |hidden: &Tensor| {
            let logp = model.logits(hidden).unwrap().log_softmax(-1, Kind::Float);
            (logp * &weights).sum(Kind::Float)
        };
        let grads = || -> Vec<Tensor> {
            params
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() {
                        g.copy()
                    } else {
                        p.zeros_like()
                    }
                })
                .collect()
        };
        let zero = || {
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
        };
        zero();
        let plain_hidden = model.hidden(&ids, &positions, &valid, None).unwrap();
        let plain_loss = loss_of(&plain_hidden);
        plain_loss.backward();
        let plain = grads();
        zero();
        let (hidden, kept) = model.hidden_checkpointed(&ids, &positions, &valid).unwrap();
        let loss = loss_of(&hidden);
        loss.backward();
        kept.backward(&model).unwrap();
        let checkpointed = grads();
        assert!(hidden.equal(&plain_hidden), "{name}: hidden states");
        assert_eq!(
            loss.double_value(&[]).to_bits(),
            plain_loss.double_value(&[]).to_bits(),
            "{name}: loss"
        );
        for (i, (c, p)) in checkpointed.iter().zip(&plain).enumerate() {
            let scale = p.abs().max().double_value(&[]);
            let diff = (c - p).abs().max().double_value(&[]);
            assert!(scale > 0.0, "{name} parameter {i}: no gradient at all");
            assert!(
                diff <= 1e-6 * scale,
                "{name} parameter {i}: gradient differs by {diff:e} (largest entry {scale:e})"
            );
        }
    }
}

/// LoRA on every family ([C-LORA]): with `B = 0` a fresh adapter model's
/// logits are the base model's bit for bit; with trained-looking factors
/// they move, switching the adapters off gives the base back bit for bit,
/// and merging `W + s B A` into a plain model gives the adapter model's
/// logits within 1e-5; only the targeted projections get adapters.
// spec: C-LORA
#[test]
fn lora_adapters_start_as_the_base_and_merge_into_it() {
    use p3o::torch::nn::{LoraSpec, LoraTargets};
    let ids: Vec<i64> = vec![3, 9, 27, 4, 11, 6, 2];
    for name in ["neox-parallel", "gpt2"].into_iter().chain(NEW_FAMILIES) {
        let base = load(name, Head::Lm);
        let base_logits = common::logits(&base, &ids);
        let spec = LoraSpec {
            r: 4,
            alpha: 8.0,
            targets: LoraTargets::AllLinear,
        };
        let model = LanguageModel::load_with_lora(
            &fixture(name),
            Head::Lm,
            Device::Cpu,
            Kind::Float,
            spec,
            3,
        )
        .unwrap();
        let adapters = model.lora.var_store().unwrap().variables();
        assert!(!adapters.is_empty(), "{name}: no adapters");
        for n in adapters.keys() {
            assert!(
                n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight"),
                "{name}: {n}"
            );
            let module = n.rsplitn(3, '.').nth(2).unwrap();
            assert!(
                base.vs
                    .variables()
                    .contains_key(&format!("{module}.weight")),
                "{name}: {n}"
            );
        }
        assert!(
            common::logits(&model, &ids).equal(&base_logits),
            "{name}: B = 0 moved the logits"
        );
        tch::manual_seed(5);
        tch::no_grad(|| {
            for (n, mut t) in adapters {
                if n.ends_with(".lora_B.weight") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.3));
                }
            }
        });
        let adapted = common::logits(&model, &ids);
        let moved = (&adapted - &base_logits).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "{name}: the adapters did nothing ({moved:e})");
        model.lora.set_enabled(false);
        assert!(
            common::logits(&model, &ids).equal(&base_logits),
            "{name}: switched off"
        );
        model.lora.set_enabled(true);
        model.merge_adapters().unwrap();
        assert!(!model.lora.enabled(), "{name}: merged adapters stay on");
        let merged = common::logits(&model, &ids);
        let scale = adapted.abs().max().double_value(&[]);
        let diff = (&merged - &adapted).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{name}: merged logits differ by {diff:e}"
        );
    }
    // Target lists: a TOML list, one comma-separated string, or all-linear.
    let parse =
        |v: &[&str]| LoraTargets::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(parse(&["all-linear"]), Ok(LoraTargets::AllLinear));
    let qv = Ok(LoraTargets::Modules(vec!["q_proj".into(), "v_proj".into()]));
    assert_eq!(parse(&["q_proj", "v_proj"]), qv);
    assert_eq!(parse(&[" q_proj , v_proj "]), qv);
    assert!(parse(&[]).is_err() && parse(&[" , "]).is_err());
    assert!(parse(&["all-linear,q_proj"]).is_err());
    // Named targets: only those modules.
    let spec = LoraSpec {
        r: 2,
        alpha: 2.0,
        targets: LoraTargets::parse(&["q_proj,v_proj".into()]).unwrap(),
    };
    let config = p3o::torch::config::ModelConfig::load(&fixture("llama")).unwrap();
    let layers = config.arch.num_layers() as usize;
    let model = LanguageModel::with_lora(config, Head::Lm, Device::Cpu, spec, 0).unwrap();
    let names: Vec<String> = model
        .lora
        .var_store()
        .unwrap()
        .variables()
        .into_keys()
        .collect();
    assert_eq!(names.len(), 2 * 2 * layers, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.contains(".q_proj.") || n.contains(".v_proj.")),
        "{names:?}"
    );
}

/// The gradients of a LoRA projection's factors are autograd's through the
/// merged weight `W + s B A` (and its transpose for `Conv1D`), within 1e-5.
// spec: C-LORA
#[test]
fn lora_gradients_equal_the_merged_weights() {
    use p3o::torch::nn::{Conv1D, Linear, LoraPlan, LoraSpec, LoraTargets};
    let (i, o, r, s) = (6i64, 5i64, 3i64, 2.5f64);
    let plan = LoraPlan::new(
        LoraSpec {
            r,
            alpha: s * r as f64,
            targets: LoraTargets::AllLinear,
        },
        Device::Cpu,
    );
    let vs = tch::nn::VarStore::new(Device::Cpu);
    tch::manual_seed(1);
    let x = Tensor::randn([4, 7, i], (Kind::Float, Device::Cpu));
    let probe = Tensor::randn([4, 7, o], (Kind::Float, Device::Cpu));
    let linear = Linear::adapted(vs.root() / "lin", i, o, true, &plan).unwrap();
    let conv = Conv1D::adapted(vs.root() / "conv", i, o, &plan).unwrap();
    let fill = |t: &Tensor| {
        tch::no_grad(|| {
            t.shallow_clone()
                .copy_(&Tensor::randn(t.size(), (Kind::Float, Device::Cpu)));
        })
    };
    for (w, bias, lora, transposed) in [
        (
            &linear.weight,
            linear.bias.as_ref().unwrap(),
            linear.lora.as_ref().unwrap(),
            false,
        ),
        (&conv.weight, &conv.bias, conv.lora.as_ref().unwrap(), true),
    ] {
        for t in [w, bias, &lora.a, &lora.b] {
            fill(t);
        }
        let y = if transposed {
            conv.forward(&x)
        } else {
            linear.forward(&x)
        }
        .unwrap();
        let grads = Tensor::run_backward(
            &[(&y * &probe).sum(Kind::Float)],
            &[&lora.a, &lora.b],
            false,
            false,
        );
        let ba = lora.b.matmul(&lora.a) * s;
        let merged = if transposed { w + ba.tr() } else { w + ba };
        let y2 = if transposed {
            x.matmul(&merged) + bias
        } else {
            x.linear(&merged, Some(bias))
        };
        assert!((&y - &y2).abs().max().double_value(&[]) <= 1e-5 * y.abs().max().double_value(&[]));
        let merged_grads = Tensor::run_backward(
            &[(&y2 * &probe).sum(Kind::Float)],
            &[&lora.a, &lora.b],
            false,
            false,
        );
        for (g, m) in grads.iter().zip(&merged_grads) {
            let scale = m.abs().max().double_value(&[]);
            let diff = (g - m).abs().max().double_value(&[]);
            assert!(
                scale > 0.0 && diff <= 1e-5 * scale,
                "transposed {transposed}: {diff:e} of {scale:e}"
            );
        }
    }
}
