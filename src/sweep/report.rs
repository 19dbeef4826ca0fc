//! What a sweep writes ([C-SWEEP]): `results.json` (every record and
//! statistic), `report.md` (the tables) and the figures.

use std::fmt::Write;
use std::path::Path;

use super::analysis::{OverSeeds, RewardKind};
use super::figures;
use super::results::SweepResults;
use crate::stats::Interval;
use crate::train::error::TrainError;

fn interval(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("[{:.3}, {:.3}]", i.lo, i.hi),
        None => "n/a".into(),
    }
}

fn over(v: &OverSeeds) -> String {
    if v.seeds == 0 {
        return "n/a".into();
    }
    format!("{:.3} {} ({})", v.mean, interval(&v.interval), v.seeds)
}

fn bin_name(lo: f64, hi: Option<f64>) -> String {
    match hi {
        Some(hi) => format!("[{lo}, {hi})"),
        None => format!("{lo}+"),
    }
}

/// `report.md`.
pub fn render(r: &SweepResults) -> String {
    let cfg = &r.config;
    let a = &r.analysis;
    let arms: Vec<String> = cfg
        .stages
        .algorithms
        .iter()
        .map(|x| x.to_string())
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "# p3o sweep\n");
    let _ = writeln!(
        s,
        "{} seeds ({}), KL coefficients {:?}, arms {}; {} RL steps per run, evaluation every {} steps on the held-out prompts ({} samples each). Intervals are 95 % percentile-bootstrap intervals over seeds unless said otherwise; `(n)` is the number of seeds a value covers.\n",
        cfg.seeds,
        cfg.seed_list()
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.betas,
        arms.join(", "),
        cfg.stages.rl_steps,
        cfg.stages.eval_every,
        cfg.stages.eval_samples
    );
    let unit_s: f64 = r.seeds.iter().map(|x| x.seconds).sum::<f64>()
        + r.runs.iter().map(|x| x.seconds).sum::<f64>();
    let _ = writeln!(
        s,
        "Each seed has its own SFT policy, preference pairs and proxy reward model; its arms all start from that policy and optimise that proxy, so the paired differences below compare arms on the same proxy, and the intervals over seeds include the variance of the whole pipeline. Compute time of the units: {:.1} min.\n",
        unit_s / 60.0
    );

    let _ = writeln!(s, "## The pipeline per seed\n");
    let _ = writeln!(
        s,
        "| seed | SFT held-out loss | labels agreeing with gold | proxy held-out accuracy (pairs) |\n|---|---|---|---|"
    );
    for x in &r.seeds {
        let _ = writeln!(
            s,
            "| {} | {:.3} -> {:.3} | {:.1} % | {:.3} ({}) |",
            x.seed,
            x.sft.initial_heldout_loss,
            x.sft.final_heldout_loss,
            100.0 * x.preference_label_agreement,
            x.reward_model.heldout_accuracy,
            x.reward_model.heldout_pairs
        );
    }
    let accs: Vec<f64> = r
        .seeds
        .iter()
        .map(|x| x.reward_model.heldout_accuracy)
        .collect();
    if !accs.is_empty() {
        let _ = writeln!(
            s,
            "\nProxy accuracy: mean {:.3}, range {:.3} to {:.3}.\n",
            accs.iter().sum::<f64>() / accs.len() as f64,
            accs.iter().copied().fold(f64::INFINITY, f64::min),
            accs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
    }

    for reward in RewardKind::ALL {
        let rn = reward.name();
        let _ = writeln!(s, "## The {rn} reward\n");
        let _ = writeln!(
            s,
            "![KL-{rn} frontier](frontier_{rn}.png)\n\n### Binned frontier\n\nPer arm and KL bin (nats per response): the mean over seeds of each seed's mean {rn} reward of the arm's evaluation points in the bin (all coefficients and steps), its interval and the seeds with points there.\n"
        );
        let bins: Vec<(f64, Option<f64>)> = {
            let mut v: Vec<(f64, Option<f64>)> = Vec::new();
            for b in a.bins.iter().filter(|b| b.reward == reward) {
                if !v.contains(&(b.lo, b.hi)) {
                    v.push((b.lo, b.hi));
                }
            }
            v.sort_by(|x, y| x.0.total_cmp(&y.0));
            v
        };
        let _ = write!(s, "| arm |");
        for &(lo, hi) in &bins {
            let _ = write!(s, " KL {} |", bin_name(lo, hi));
        }
        let _ = writeln!(s, "\n|---|{}", "---|".repeat(bins.len()));
        for arm in &arms {
            let _ = write!(s, "| {arm} |");
            for &(lo, hi) in &bins {
                let cell = a
                    .bins
                    .iter()
                    .find(|b| b.reward == reward && &b.arm == arm && b.lo == lo && b.hi == hi)
                    .map_or("".into(), |b| over(&b.value));
                let _ = write!(s, " {cell} |");
            }
            let _ = writeln!(s);
        }

        let _ = writeln!(
            s,
            "\n### Envelope means\n\nPer arm and KL budget K: the mean over budgets up to K of the best {rn} reward reached within the budget ([C-STATS]), averaged over seeds.\n"
        );
        let _ = write!(s, "| arm |");
        for k in &cfg.kl_budgets {
            let _ = write!(s, " K = {k} |");
        }
        let _ = writeln!(s, "\n|---|{}", "---|".repeat(cfg.kl_budgets.len()));
        for arm in &arms {
            let _ = write!(s, "| {arm} |");
            for &k in &cfg.kl_budgets {
                let cell = a
                    .envelopes
                    .iter()
                    .find(|e| e.reward == reward && &e.arm == arm && e.budget == k)
                    .map_or("".into(), |e| over(&e.value));
                let _ = write!(s, " {cell} |");
            }
            let _ = writeln!(s);
        }

        let _ = writeln!(
            s,
            "\n### Paired differences\n\n![paired differences, {rn}](forest_{rn}.png)\n\nPer seed, the envelope mean of the first arm minus the second's; the mean over seeds with its interval, the seeds where it is positive and negative, and the two-sided sign test.\n\n| comparison | K | mean difference [95 % CI] | + / - | sign-test p |\n|---|---|---|---|---|"
        );
        for p in a.paired.iter().filter(|p| p.reward == reward) {
            let _ = writeln!(
                s,
                "| {} - {} | {} | {:+.3} {} | {} / {} | {:.3} |",
                p.a,
                p.b,
                p.budget,
                p.value.mean,
                interval(&p.value.interval),
                p.sign.positive,
                p.sign.negative,
                p.sign.p_value
            );
        }
        let _ = writeln!(
            s,
            "\n### KL spent for P3O-V2's reward\n\nPer arm and budget K: on each seed, the smallest KL at which the arm's envelope reaches the {rn} reward P3O-V2's envelope holds at K, against P3O-V2's own; the ratio of the means over the seeds where the arm reaches it (above 1: the arm spends more KL for that reward).\n\n| arm | K | seeds reaching | arm's KL | P3O-V2's KL | ratio [95 % CI] |\n|---|---|---|---|---|---|"
        );
        for m in a.kl_match.iter().filter(|m| m.reward == reward) {
            let _ = writeln!(
                s,
                "| {} | {} | {} / {} | {:.3} | {:.3} | {:.2} {} |",
                m.arm,
                m.budget,
                m.reached,
                m.seeds,
                m.arm_kl,
                m.match_kl,
                m.ratio,
                interval(&m.interval)
            );
        }
        let _ = writeln!(
            s,
            "\n### Win rates of the final policies\n\nPer KL coefficient: the share of held-out prompts (pooled over seeds; ties count half) on which the first arm's final policy has the higher mean {rn} reward, with the Wilson interval. Prompts of one seed share a proxy and a start, so the pooled interval is narrower than one over seeds would be.\n\n| beta | comparison | win rate [95 % CI] | prompts |\n|---|---|---|---|"
        );
        for w in a.win_rates.iter().filter(|w| w.reward == reward) {
            let _ = writeln!(
                s,
                "| {} | {} over {} | {:.3} {} | {} |",
                w.beta,
                w.a,
                w.b,
                w.rate,
                interval(&w.interval),
                w.trials
            );
        }
        let _ = writeln!(s);
    }
    s
}

/// Writes `results.json`, `report.md` and the figures into `out`.
pub fn write_outputs(r: &SweepResults, out: &Path) -> Result<(), TrainError> {
    let named = |p: &Path, e: std::io::Error| TrainError::Input(format!("{}: {e}", p.display()));
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(r).expect("JSON"))
        .map_err(|e| named(&json, e))?;
    figures::write_figures(r, out)
        .map_err(|e| TrainError::Input(format!("figures in {}: {e}", out.display())))?;
    let md = out.join("report.md");
    std::fs::write(&md, render(r)).map_err(|e| named(&md, e))
}
