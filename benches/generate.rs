//! Generation throughput on the CPU: the tch stack with and without the KV
//! cache, on the model and prompts that benches/hf_generate.py writes (run
//! it first; it also prints HF transformers' tokens/s for the ratio).
//! `P3O_BENCH_MODEL=DIR` picks another model directory it wrote (e.g.
//! target/bench-models/tiny-random for `--shape tiny`).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use p3o::torch::generate::{GenerateOptions, generate};
use p3o::torch::{Head, LanguageModel};
use tch::{Device, Kind};

fn main() {
    let dir = std::env::var_os("P3O_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models/pythia-14m-random")
        });
    let Ok(text) = std::fs::read_to_string(dir.join("bench_prompts.json")) else {
        println!(
            "no benchmark model in {}: run `python3 benches/hf_generate.py` first",
            dir.display()
        );
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&text).expect("bench_prompts.json is JSON");
    let prompts: Vec<Vec<i64>> = spec["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect();
    let new = spec["max_new_tokens"].as_i64().unwrap();
    let threads: i32 = std::env::var("P3O_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let model = LanguageModel::load(&dir, Head::Lm, Device::Cpu, Kind::Float)
        .expect("the benchmark model loads");
    let mut c = Criterion::default().configure_from_args();
    let model_name = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let mut group = c.benchmark_group(format!("generate/{model_name}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements((prompts.len() as i64 * new) as u64));
    // "kv_cache" and "no_cache" return token ids only, as HF's `generate`
    // does by default; "kv_cache_logprobs" also the sampled tokens' log-probs
    // (what the trainer asks for).
    for (name, use_cache, logprobs) in [
        ("kv_cache", true, false),
        ("kv_cache_logprobs", true, true),
        ("no_cache", false, false),
    ] {
        let o = GenerateOptions {
            max_new_tokens: new,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
            use_cache,
            logprobs,
        };
        group.bench_function(
            format!("{name}/{}x{new}/{threads}threads", prompts.len()),
            |b| b.iter(|| generate(&model, &prompts, &o).unwrap()),
        );
    }
    group.finish();
    c.final_summary();
}
