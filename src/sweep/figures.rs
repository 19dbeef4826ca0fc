//! The sweep's figures ([C-SWEEP]): per reward, the KL-reward frontier as
//! every evaluation point (faint) with each arm's binned mean and its
//! interval band; and a forest plot of the paired differences.

use std::path::Path;

use super::analysis::{RewardKind, RunRecord};
use super::results::SweepResults;
use crate::plots::{Band, BandChart, Forest, save_band_chart, save_forest};

fn reward_of(kind: RewardKind, p: &super::analysis::EvalPoint) -> f64 {
    match kind {
        RewardKind::Proxy => p.proxy,
        RewardKind::Gold => p.gold,
    }
}

fn cloud(runs: &[RunRecord], arm: &str, kind: RewardKind) -> Vec<(f64, f64)> {
    runs.iter()
        .filter(|r| r.arm == arm)
        .flat_map(|r| r.eval.iter().map(move |p| (p.kl, reward_of(kind, p))))
        .collect()
}

/// Writes `frontier_{proxy,gold}` and `forest_{proxy,gold}` (PNG and SVG).
pub fn write_figures(r: &SweepResults, out: &Path) -> Result<(), String> {
    let arms: Vec<String> = r
        .config
        .stages
        .algorithms
        .iter()
        .map(|a| a.to_string())
        .collect();
    let largest_budget = r.config.kl_budgets.iter().copied().fold(0.0, f64::max);
    for kind in RewardKind::ALL {
        let name = kind.name();
        // The KL axis ends at the 95th percentile of the points (times
        // 1.1), so that a runaway arm leaves the others readable.
        let mut kls: Vec<f64> = r
            .runs
            .iter()
            .flat_map(|x| x.eval.iter().map(|p| p.kl))
            .filter(|k| k.is_finite())
            .collect();
        kls.sort_by(f64::total_cmp);
        let x_max = kls.get(kls.len() * 95 / 100).map(|k| 1.1 * k);
        let cut = match (x_max, kls.last()) {
            (Some(m), Some(&top)) if top > m => {
                format!(", KL axis cut at {m:.1} (largest {top:.1})")
            }
            _ => String::new(),
        };
        let bands = arms
            .iter()
            .enumerate()
            .map(|(i, arm)| {
                let mut means: Vec<(f64, f64, f64, f64)> = r
                    .analysis
                    .bins
                    .iter()
                    .filter(|b| b.reward == kind && &b.arm == arm)
                    .map(|b| {
                        let (lo, hi) = b
                            .value
                            .interval
                            .map_or((b.value.mean, b.value.mean), |iv| (iv.lo, iv.hi));
                        (b.kl, b.value.mean, lo, hi)
                    })
                    .collect();
                means.sort_by(|a, b| a.0.total_cmp(&b.0));
                Band {
                    label: arm.clone(),
                    colour: i,
                    cloud: cloud(&r.runs, arm, kind),
                    means,
                }
            })
            .collect();
        save_band_chart(
            &out.join(format!("frontier_{name}")),
            &BandChart {
                title: format!(
                    "KL-{name} frontier, {} seeds: binned means, 95 % CI{cut}",
                    r.config.seeds
                ),
                x_label: "KL(pi || pi_SFT), nats per response".into(),
                y_label: format!("{name} reward"),
                bands,
                x_max,
            },
        )?;
        let rows = r
            .analysis
            .paired
            .iter()
            .filter(|p| p.reward == kind && p.budget == largest_budget)
            .map(|p| {
                let (lo, hi) = p
                    .value
                    .interval
                    .map_or((f64::NAN, f64::NAN), |iv| (iv.lo, iv.hi));
                (format!("{} - {}", p.a, p.b), p.value.mean, lo, hi)
            })
            .collect();
        save_forest(
            &out.join(format!("forest_{name}")),
            &Forest {
                title: format!("Paired differences, {name} reward, KL budget {largest_budget}"),
                x_label: format!(
                    "difference of envelope means ({name} reward), 95 % CI over seeds"
                ),
                rows,
            },
        )?;
    }
    Ok(())
}
