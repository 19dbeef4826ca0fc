//! The float64 twin of [C-FUSED-HEAD], row by row from the definition:
//! the slow side of every differential test of the fast paths.

use crate::reference::tokens::{token_logprob, token_logprob_grad};

/// The op's inputs, row-major: `hidden [n, h]`, `weight [v, h]`, `bias
/// [v]`, `targets [n]` (each in `0..v`), `temperature > 0`.
#[derive(Clone, Debug)]
pub struct HeadInputs {
    pub n: usize,
    pub h: usize,
    pub v: usize,
    pub hidden: Vec<f64>,
    pub weight: Vec<f64>,
    pub bias: Option<Vec<f64>>,
    pub targets: Vec<usize>,
    pub temperature: f64,
}

/// Per row: `logp` and the entropy of the softmax.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadOutputs {
    pub logp: Vec<f64>,
    pub entropy: Vec<f64>,
}

/// The gradients of the loss with respect to `hidden`, `weight` and `bias`
/// (present when the inputs have one), in their layouts.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrads {
    pub hidden: Vec<f64>,
    pub weight: Vec<f64>,
    pub bias: Option<Vec<f64>>,
}

impl HeadInputs {
    /// Row `r`'s logits `z = (W h_r + b) / tau`.
    pub fn logits(&self, r: usize) -> Vec<f64> {
        let h = &self.hidden[r * self.h..(r + 1) * self.h];
        (0..self.v)
            .map(|v| {
                let w = &self.weight[v * self.h..(v + 1) * self.h];
                let dot: f64 = h.iter().zip(w).map(|(a, b)| a * b).sum();
                (dot + self.bias.as_ref().map_or(0.0, |b| b[v])) / self.temperature
            })
            .collect()
    }
}

/// `log softmax(z)`, each entry formed as `(z_v - max) - log sum exp(z -
/// max)`, exact to rounding however large `max` is.
pub fn log_softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|&v| (v - max) - log_sum).collect()
}

/// `-sum_v p_v log p_v` from `log p` ([`log_softmax`]); a `p_v` that
/// underflows adds nothing.
pub fn entropy(log_p: &[f64]) -> f64 {
    -log_p
        .iter()
        .map(|&lp| {
            let p = lp.exp();
            if p == 0.0 { 0.0 } else { p * lp }
        })
        .sum::<f64>()
}

/// The forward of [C-FUSED-HEAD].
pub fn forward(x: &HeadInputs) -> HeadOutputs {
    let (logp, entropy) = (0..x.n)
        .map(|r| {
            let z = x.logits(r);
            (token_logprob(&z, x.targets[r]).0, entropy(&log_softmax(&z)))
        })
        .unzip();
    HeadOutputs { logp, entropy }
}

/// `d loss / d z` of one row: `a ([v = t] - p_v) - c p_v (log p_v + H)`.
pub fn logits_grad(z: &[f64], target: usize, a: f64, c: f64) -> Vec<f64> {
    let mut g = token_logprob_grad(z, target, a);
    if c != 0.0 {
        let log_p = log_softmax(z);
        let big_h = entropy(&log_p);
        for (gv, &lp) in g.iter_mut().zip(&log_p) {
            let p = lp.exp();
            if p != 0.0 {
                *gv -= c * p * (lp + big_h);
            }
        }
    }
    g
}

/// The backward of [C-FUSED-HEAD] for `grad_logp [n]` and, optionally,
/// `grad_entropy [n]`.
pub fn backward(x: &HeadInputs, grad_logp: &[f64], grad_entropy: Option<&[f64]>) -> HeadGrads {
    let mut hidden = vec![0.0; x.n * x.h];
    let mut weight = vec![0.0; x.v * x.h];
    let mut bias = x.bias.as_ref().map(|_| vec![0.0; x.v]);
    for r in 0..x.n {
        let c = grad_entropy.map_or(0.0, |g| g[r]);
        let g = logits_grad(&x.logits(r), x.targets[r], grad_logp[r], c);
        let h = &x.hidden[r * x.h..(r + 1) * x.h];
        for (v, &gv) in g.iter().enumerate() {
            let gv = gv / x.temperature;
            let w = &x.weight[v * x.h..(v + 1) * x.h];
            for k in 0..x.h {
                hidden[r * x.h + k] += gv * w[k];
                weight[v * x.h + k] += gv * h[k];
            }
            if let Some(b) = bias.as_mut() {
                b[v] += gv;
            }
        }
    }
    HeadGrads {
        hidden,
        weight,
        bias,
    }
}
