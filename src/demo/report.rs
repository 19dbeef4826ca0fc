//! `report.md` and its figures from a demo's results. Nothing here reads
//! the clock, so two runs with one seed on one machine write the same
//! report.

use std::fmt::Write as _;
use std::path::Path;

use super::arm::DemoArm;
use super::results::{DemoResults, RunCurves, fmt_mean_se};
use crate::plots::{Heatmap, LineChart, Series, save_heatmap, save_line_chart, save_panels};
use crate::train::error::TrainError;

/// The frontier of one run: (KL, reward) eval points, by `pick` (proxy or
/// gold).
fn frontier(c: &RunCurves, gold: bool) -> Vec<(f64, f64)> {
    c.eval
        .iter()
        .map(|&(_, kl, proxy, g)| (kl, if gold { g } else { proxy }))
        .collect()
}

/// The best reward among eval points with KL at most `budget`.
fn best_within(points: &[(f64, f64)], budget: f64) -> Option<f64> {
    points
        .iter()
        .filter(|(kl, r)| *kl <= budget && r.is_finite())
        .map(|&(_, r)| r)
        .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))))
}

/// KL budgets of the equal-KL table: a quarter, a half and all of the
/// smallest largest-KL among the unshifted runs.
pub fn kl_budgets(results: &DemoResults) -> Vec<f64> {
    let smallest = results
        .curves
        .iter()
        .filter(|c| !c.shifted)
        .map(|c| c.eval.iter().map(|e| e.1).fold(f64::MIN, f64::max))
        .fold(f64::MAX, f64::min);
    if !(smallest.is_finite() && smallest > 0.0) {
        return Vec::new();
    }
    [0.25, 0.5, 1.0].iter().map(|f| f * smallest).collect()
}

fn write_figures(results: &DemoResults, out: &Path) -> Result<(), String> {
    let unshifted: Vec<(usize, &RunCurves)> = results
        .curves
        .iter()
        .filter(|c| !c.shifted)
        .enumerate()
        .collect();
    for (gold, stem, what) in [
        (false, "frontier_proxy", "proxy reward (reward model)"),
        (true, "frontier_gold", "gold reward"),
    ] {
        save_line_chart(
            &out.join(stem),
            &LineChart {
                title: format!("KL-reward frontier: {what}"),
                x_label: "KL(pi || pi_sft), nats per response".into(),
                y_label: what.into(),
                series: unshifted
                    .iter()
                    .map(|(i, c)| Series {
                        label: c.arm.to_string(),
                        points: frontier(c, gold),
                        dashed: false,
                        colour: *i,
                    })
                    .collect(),
            },
        )?;
    }
    let cmp = &results.comparison;
    let matrix = cmp.gold_reward.as_ref().unwrap_or(&cmp.reward);
    save_heatmap(
        &out.join("win_rates"),
        &Heatmap {
            title: "Win rate of row over column (gold reward)".into(),
            names: cmp.policies.clone(),
            values: matrix
                .iter()
                .map(|r| r.iter().map(|m| m.mean).collect())
                .collect(),
        },
    )?;
    // A shifted run takes the colour after all unshifted ones.
    let colour_of = |arm: DemoArm, shifted: bool| {
        let i = unshifted
            .iter()
            .find(|(_, c)| c.arm == arm)
            .map_or(0, |(i, _)| *i);
        i + usize::from(shifted) * unshifted.len()
    };
    let panels: Vec<LineChart> = unshifted
        .iter()
        .map(|(_, u)| LineChart {
            title: format!("{}: r (solid), r + delta (dashed)", u.arm),
            x_label: "step".into(),
            y_label: "mean proxy reward of the rollout".into(),
            series: results
                .curves
                .iter()
                .filter(|c| c.arm == u.arm)
                .map(|c| Series {
                    label: if c.shifted {
                        format!("{} on r + delta", c.arm)
                    } else {
                        format!("{} on r", c.arm)
                    },
                    points: c.train_reward.clone(),
                    dashed: c.shifted,
                    colour: colour_of(c.arm, c.shifted),
                })
                .collect(),
        })
        .collect();
    save_panels(&out.join("reward_shift"), &panels)
}

/// Renders the markdown report.
pub fn render(results: &DemoResults) -> String {
    let cfg = &results.config;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# p3o demo report\n");
    let _ = writeln!(
        w,
        "The whole pipeline on the built-in toy task (spec/p3o.md, C-TOY-TASK and C-TOY-GOLD), seed {}. \
         Every number and figure below comes from this run. Configuration:\n",
        cfg.seed
    );
    let _ = writeln!(
        w,
        "```toml\n{}```\n",
        toml::to_string(cfg).expect("the config serialises")
    );

    let _ = writeln!(w, "## 1. Supervised fine-tuning\n");
    let sft = &results.sft;
    let _ = writeln!(
        w,
        "A tiny GPT-NeoX (seeded random init) trained on {} supervised examples for {} steps; \
         held-out mean token cross-entropy ({} examples): **{:.4} -> {:.4}** nats.\n",
        sft.examples,
        cfg.sft_steps,
        sft.heldout_examples,
        sft.initial_heldout_loss,
        sft.final_heldout_loss
    );

    let _ = writeln!(w, "## 2. Preference data and proxy reward model\n");
    let rm = &results.reward_model;
    let _ = writeln!(
        w,
        "{} pairs sampled from the SFT policy, labelled with probability sigma(gold1 - gold2); \
         {:.1} % of the labels agree with the sign of the gold difference. \
         Bradley-Terry reward model from the SFT weights: held-out accuracy **{:.3}** on {} pairs \
         (before training {:.3}), held-out loss {:.4}.\n",
        cfg.preference_pairs,
        100.0 * results.preference_label_agreement,
        rm.heldout_accuracy,
        rm.heldout_pairs,
        rm.initial_heldout_accuracy,
        rm.heldout_loss
    );

    let _ = writeln!(w, "## 3. KL-reward frontier\n");
    let _ = writeln!(
        w,
        "Each arm starts from the SFT policy and is trained against the proxy for {} steps on {} \
         responses per step (`-gG`: groups of G responses to each of {} / G prompts; otherwise \
         pairs to {} prompts, and PPO one response to each of {}); every {} steps its held-out KL \
         to the SFT policy and its mean proxy and gold rewards are measured ({} sample(s) per \
         held-out prompt).\n",
        cfg.rl_steps,
        2 * cfg.rl_batch_size,
        2 * cfg.rl_batch_size,
        cfg.rl_batch_size,
        cfg.rl_batch_size,
        cfg.eval_every,
        cfg.eval_samples
    );
    let _ = writeln!(w, "![frontier, proxy reward](frontier_proxy.png)\n");
    let _ = writeln!(w, "![frontier, gold reward](frontier_gold.png)\n");
    let budgets = kl_budgets(results);
    if !budgets.is_empty() {
        let _ = writeln!(
            w,
            "Best reward reached within a KL budget (proxy / gold):\n"
        );
        let _ = write!(w, "| arm |");
        for b in &budgets {
            let _ = write!(w, " KL <= {b:.2} |");
        }
        let _ = writeln!(w, " largest KL |");
        let _ = writeln!(w, "|---|{}---|", "---|".repeat(budgets.len()));
        for c in results.curves.iter().filter(|c| !c.shifted) {
            let _ = write!(w, "| {} |", c.arm);
            for &b in &budgets {
                let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
                let _ = write!(
                    w,
                    " {} / {} |",
                    f(best_within(&frontier(c, false), b)),
                    f(best_within(&frontier(c, true), b))
                );
            }
            let max_kl = c.eval.iter().map(|e| e.1).fold(f64::MIN, f64::max);
            let _ = writeln!(w, " {max_kl:.2} |");
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## 4. Final policies on held-out prompts\n");
    let _ = writeln!(
        w,
        "{} sample(s) per held-out prompt; mean ± standard error over prompts.\n",
        cfg.eval_samples
    );
    let _ = writeln!(
        w,
        "| policy | KL to SFT | proxy reward | gold reward | response tokens |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for e in &results.final_eval {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            e.policy,
            fmt_mean_se(&e.kl),
            fmt_mean_se(&e.reward),
            e.gold_reward.as_ref().map_or("-".into(), fmt_mean_se),
            fmt_mean_se(&e.response_length)
        );
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## 5. Win rates\n");
    let cmp = &results.comparison;
    for (what, m) in [
        ("proxy reward", Some(&cmp.reward)),
        ("gold reward", cmp.gold_reward.as_ref()),
    ] {
        let Some(m) = m else { continue };
        let _ = writeln!(
            w,
            "Win rate of the row over the column under the {what} (± standard error):\n"
        );
        let _ = writeln!(w, "| | {} |", cmp.policies.join(" | "));
        let _ = writeln!(w, "|---|{}", "---|".repeat(cmp.policies.len()));
        for (name, row) in cmp.policies.iter().zip(m) {
            let cells: Vec<String> = row.iter().map(fmt_mean_se).collect();
            let _ = writeln!(w, "| {name} | {} |", cells.join(" | "));
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "![win rates](win_rates.png)\n");

    let _ = writeln!(w, "## 6. Reward-shift experiment\n");
    if results.shift.is_empty() {
        let _ = writeln!(w, "Skipped (no `reward_shift` configured).\n");
    } else {
        let _ = writeln!(
            w,
            "Each arm trained again, same seed, on r + delta(x) with delta = `{}` (spec \
             C-REWARD-SHIFT). By Theorem 2 and its extension to groups (C-GROUP-SHIFT) P3O, DPO, \
             RLOO and GRPO see the same losses and end with the same weights; PPO's value function \
             sees the shift, so its run differs.\n",
            cfg.reward_shift
        );
        let _ = writeln!(
            w,
            "| arm | largest difference of the training reward | relative difference of the final weights |"
        );
        let _ = writeln!(w, "|---|---|---|");
        for r in &results.shift {
            let _ = writeln!(
                w,
                "| {} | {:.3e} | {:.3e} |",
                r.arm, r.max_reward_difference, r.weight_relative_difference
            );
        }
        let _ = writeln!(w, "\n![reward shift](reward_shift.png)\n");
    }
    let _ = writeln!(
        w,
        "Files: `sft/`, `preferences.jsonl`, `reward_model/`, `rl/<arm>[-shifted]/` \
         (metrics.jsonl, final/), `results.json`; figures as PNG and SVG."
    );
    s
}

/// Writes `report.md` and the figures into `out`.
pub fn write_report(results: &DemoResults, out: &Path) -> Result<(), TrainError> {
    write_figures(results, out).map_err(|e| TrainError::Plot(e.to_string()))?;
    std::fs::write(out.join("report.md"), render(results))?;
    Ok(())
}
