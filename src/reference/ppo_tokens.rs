//! Token-level PPO loss ([C-PPO-TOKEN]) in float64: the twin of the
//! trainer's tch PPO loss.

/// One token of a rollout, with the constants of the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PpoToken {
    pub lp_old: f64,
    pub value_old: f64,
    pub advantage: f64,
    pub ret: f64,
    pub mask: f64,
}

/// Hyper-parameters of the PPO loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PpoHyper {
    pub epsilon: f64,
    pub vf_coef: f64,
    pub value_clip: f64,
}

/// The loss averaged over valid tokens, and its gradient with respect to
/// each token's log-prob and value.
pub fn ppo_token_loss(
    tokens: &[PpoToken],
    lp: &[f64],
    value: &[f64],
    h: &PpoHyper,
) -> (f64, Vec<f64>, Vec<f64>) {
    let n: f64 = tokens.iter().map(|t| t.mask).sum::<f64>().max(1.0);
    let (mut loss, mut g_lp, mut g_v) = (0.0, vec![0.0; lp.len()], vec![0.0; lp.len()]);
    for (i, t) in tokens.iter().enumerate() {
        if t.mask == 0.0 {
            continue;
        }
        let rho = (lp[i] - t.lp_old).exp();
        let a = t.advantage;
        let (plain, clipped) = (-a * rho, -a * rho.clamp(1.0 - h.epsilon, 1.0 + h.epsilon));
        // max(-A rho, -A clip(rho)) = -min(A rho, A clip(rho)): the gradient
        // passes unless clipping wins strictly ([C-CLIP]).
        let zeroed = (a > 0.0 && rho > 1.0 + h.epsilon) || (a < 0.0 && rho < 1.0 - h.epsilon);
        loss += t.mask * plain.max(clipped) / n;
        if !zeroed {
            g_lp[i] = t.mask * (-a * rho) / n;
        }
        let v = value[i];
        let vc = v.clamp(t.value_old - h.value_clip, t.value_old + h.value_clip);
        let (e1, e2) = ((v - t.ret).powi(2), (vc - t.ret).powi(2));
        loss += t.mask * h.vf_coef * 0.5 * e1.max(e2) / n;
        // The clipped branch wins strictly only outside the value band
        // (inside it `vc = v`), where `vc` is constant: no gradient.
        let dv = if e1 >= e2 { v - t.ret } else { 0.0 };
        g_v[i] = t.mask * h.vf_coef * dv / n;
    }
    (loss, g_lp, g_v)
}
