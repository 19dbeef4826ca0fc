//! One training step of each algorithm on the built-in default task (CPU,
//! 2 threads): time per step and per sample, and the shares of generation,
//! scoring (reference log-probs and rewards; PPO also the policy's values
//! and behaviour log-probs) and the update.

use std::time::Duration;

use criterion::Criterion;
use p3o::train::config::TrainConfig;
use p3o::train::trainer::Trainer;
use p3o::train::trainer::metrics::{MetricsLine, StepMetrics};

fn main() {
    // As `p3o train` does at start-up.
    p3o::torch::memory::keep_freed_memory();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("train_step_default");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let mut shares = Vec::new();
    // Every algorithm with 32 responses per step: 16 prompts x 2, or for the
    // groups of four 8 prompts x 4 (PPO: 32 prompts x 1).
    for (name, sets) in [
        ("p3o-v1", &["algorithm=p3o-v1"][..]),
        ("p3o-v2", &["algorithm=p3o-v2"][..]),
        ("dpo", &["algorithm=dpo"][..]),
        ("ppo", &["algorithm=ppo"][..]),
        ("p3o-trlx", &["algorithm=p3o-trlx"][..]),
        (
            "p3o-v2-g4",
            &["algorithm=p3o-v2", "responses_per_prompt=4", "batch_size=8"][..],
        ),
        (
            "rloo-g4",
            &["algorithm=rloo", "responses_per_prompt=4", "batch_size=8"][..],
        ),
        (
            "grpo-g4",
            &["algorithm=grpo", "responses_per_prompt=4", "batch_size=8"][..],
        ),
    ] {
        let alg = name;
        let sets: Vec<String> = sets
            .iter()
            .map(|s| s.to_string())
            .chain(["steps=100000".to_string()])
            .collect();
        let cfg = TrainConfig::load(None, &sets).expect("a valid config");
        let out = std::env::temp_dir().join(format!("p3o-bench-{alg}-{}", std::process::id()));
        let mut trainer = Trainer::new(cfg, &out, None).expect("the default task loads");
        let mut lines: Vec<StepMetrics> = Vec::new();
        group.bench_function(alg, |b| {
            b.iter(|| match trainer.step_once().expect("a step runs") {
                MetricsLine::Step(m) => lines.push(m),
                other => panic!("not a training step: {other:?}"),
            })
        });
        let mean =
            |k: fn(&StepMetrics) -> f64| lines.iter().map(k).sum::<f64>() / lines.len() as f64;
        let (g, s, u) = (
            mean(|m| m.time_generate_s),
            mean(|m| m.time_score_s),
            mean(|m| m.time_update_s),
        );
        let total = g + s + u;
        shares.push(format!(
            "{alg:<9} {:>8.1} ms/step {:>7.2} ms/sample   generate {:>4.0}%  score {:>4.0}%  update {:>4.0}%",
            total * 1e3,
            total * 1e3 / 32.0,
            100.0 * g / total,
            100.0 * s / total,
            100.0 * u / total
        ));
        let _ = std::fs::remove_dir_all(&out);
    }
    group.finish();
    c.final_summary();
    println!("\nshares over every timed step (32 responses per step):");
    for line in shares {
        println!("{line}");
    }
}
