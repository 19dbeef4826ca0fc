//! The sweep's statistics ([C-SWEEP]) on hand-made records whose answers
//! are known: binned means, envelope means, paired differences with their
//! sign test, the KL spent for P3O-V2's reward, pooled win rates.

use p3o::sweep::analysis::{EvalPoint, Layout, RewardKind, RunRecord, analyse};

fn point(step: usize, kl: f64, proxy: f64) -> EvalPoint {
    // The gold reward is twice the proxy, so both rewards are checked.
    EvalPoint {
        step,
        kl,
        proxy,
        gold: 2.0 * proxy,
    }
}

/// P3O-V2 climbs one unit of reward per nat; PPO half a unit per nat (so
/// it needs twice the KL for any reward); P3O-V1 equals P3O-V2 plus a seed's
/// offset. Seeds add `seed` to every reward.
fn records() -> Vec<RunRecord> {
    let mut out = Vec::new();
    for seed in 0..3u64 {
        let base = seed as f64;
        for (arm, slope, offset) in [
            ("p3o-v2", 1.0, 0.0),
            ("ppo", 0.5, 0.0),
            ("p3o-v1", 1.0, 0.1 * base),
        ] {
            let eval = (0..=4)
                .map(|i| {
                    let kl = i as f64;
                    point(i, kl, base + offset + slope * kl)
                })
                .collect();
            // Final per-prompt rewards: P3O-V2 beats PPO on 3 of 4 prompts
            // and ties the fourth.
            let final_proxy = match arm {
                "ppo" => vec![0.0, 0.0, 0.0, 1.0],
                _ => vec![1.0, 1.0, 1.0, 1.0],
            };
            out.push(RunRecord {
                seed,
                beta: 0.1,
                arm: arm.into(),
                eval,
                final_kl: 0.0,
                final_gold: final_proxy.clone(),
                final_proxy,
                seconds: 0.0,
            });
        }
    }
    out
}

// spec: C-SWEEP
#[test]
fn statistics_of_known_records() {
    let arms: Vec<String> = ["p3o-v1", "p3o-v2", "ppo"].map(String::from).to_vec();
    let a = analyse(
        &records(),
        &Layout {
            arms: &arms,
            seeds: &[0, 1, 2],
            betas: &[0.1],
            kl_bins: &[0.0, 2.0],
            kl_budgets: &[2.0, 4.0],
        },
    );
    // Bin [0, 2) holds KL 0 and 1: P3O-V2's mean is seed + 0.5, so 1.5
    // over seeds; the open bin holds 2, 3, 4: seed + 3, so 4.
    let bin = |arm: &str, lo: f64, reward: RewardKind| {
        a.bins
            .iter()
            .find(|b| b.arm == arm && b.lo == lo && b.reward == reward)
            .unwrap()
    };
    let b = bin("p3o-v2", 0.0, RewardKind::Proxy);
    assert!((b.value.mean - 1.5).abs() < 1e-12 && b.hi == Some(2.0) && b.value.seeds == 3);
    assert!((b.kl - 0.5).abs() < 1e-12);
    let b = bin("p3o-v2", 2.0, RewardKind::Gold);
    assert!((b.value.mean - 8.0).abs() < 1e-12 && b.hi.is_none());
    let iv = b.value.interval.unwrap();
    assert!(iv.lo >= 6.0 - 1e-12 && iv.hi <= 10.0 + 1e-12 && iv.lo < iv.hi);
    // The envelope of a line r = c + s k is a staircase with steps at the
    // integers: its mean up to K = 2 is c + s/2, up to 4 it is c + 1.5 s.
    let env = |arm: &str, k: f64| {
        a.envelopes
            .iter()
            .find(|e| e.arm == arm && e.budget == k && e.reward == RewardKind::Proxy)
            .unwrap()
            .value
            .mean
    };
    assert!((env("p3o-v2", 2.0) - 1.5).abs() < 1e-12);
    assert!((env("ppo", 4.0) - (1.0 + 0.75)).abs() < 1e-12);
    // P3O-V2 minus PPO up to 4: (1.5 - 0.75) on every seed.
    let p = a
        .paired
        .iter()
        .find(|p| {
            p.a == "p3o-v2" && p.b == "ppo" && p.budget == 4.0 && p.reward == RewardKind::Proxy
        })
        .unwrap();
    assert_eq!(p.differences, vec![0.75; 3]);
    assert_eq!((p.sign.positive, p.sign.negative), (3, 0));
    assert!((p.sign.p_value - 0.25).abs() < 1e-12);
    let iv = p.value.interval.unwrap();
    assert!((iv.lo - 0.75).abs() < 1e-12 && (iv.hi - 0.75).abs() < 1e-12);
    // P3O-V1 minus P3O-V2: 0, 0.1, 0.2 by seed; one zero is dropped.
    let p = a
        .paired
        .iter()
        .find(|p| {
            p.a == "p3o-v1" && p.b == "p3o-v2" && p.budget == 2.0 && p.reward == RewardKind::Gold
        })
        .unwrap();
    assert!((p.value.mean - 0.2).abs() < 1e-12, "{}", p.value.mean);
    assert_eq!((p.sign.positive, p.sign.negative, p.sign.ties), (2, 0, 1));
    // Only P3O arms start paired comparisons.
    assert!(a.paired.iter().all(|p| p.a != "ppo"));
    // PPO reaches P3O-V2's reward at K = 2 (c + 2) at KL 4: ratio 2; at
    // K = 4 (c + 4) never.
    let m = |arm: &str, k: f64| {
        a.kl_match
            .iter()
            .find(|m| m.arm == arm && m.budget == k && m.reward == RewardKind::Proxy)
            .unwrap()
    };
    let r = m("ppo", 2.0);
    assert_eq!((r.reached, r.seeds), (3, 3));
    assert!((r.ratio - 2.0).abs() < 1e-12 && (r.arm_kl - 4.0).abs() < 1e-12);
    assert_eq!(m("ppo", 4.0).reached, 0);
    assert!((m("p3o-v2", 4.0).ratio - 1.0).abs() < 1e-12);
    // Win rates: 3 wins and a tie on each of 3 seeds: 10.5 / 12.
    let w = a
        .win_rates
        .iter()
        .find(|w| w.a == "p3o-v2" && w.b == "ppo" && w.reward == RewardKind::Gold)
        .unwrap();
    assert_eq!(w.trials, 12);
    assert!((w.rate - 10.5 / 12.0).abs() < 1e-12);
    let iv = w.interval.unwrap();
    assert!(iv.lo < w.rate && w.rate < iv.hi);
}

/// A seed without an arm's run leaves that arm's statistics over the seeds
/// it has, and the paired differences over the seeds both have.
// spec: C-SWEEP
#[test]
fn missing_runs_shrink_the_seed_count() {
    let mut recs = records();
    recs.retain(|r| !(r.arm == "ppo" && r.seed == 2));
    let arms: Vec<String> = ["p3o-v2", "ppo"].map(String::from).to_vec();
    let a = analyse(
        &recs,
        &Layout {
            arms: &arms,
            seeds: &[0, 1, 2],
            betas: &[0.1],
            kl_bins: &[0.0],
            kl_budgets: &[1.0],
        },
    );
    let e = a.envelopes.iter().find(|e| e.arm == "ppo").unwrap();
    assert_eq!(e.value.seeds, 2);
    let p = a.paired.iter().find(|p| p.b == "ppo").unwrap();
    assert_eq!(p.differences.len(), 2);
    let w = a.win_rates.iter().find(|w| w.b == "ppo").unwrap();
    assert_eq!(w.trials, 8);
}
