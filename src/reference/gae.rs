//! Generalised advantage estimation over right-padded responses ([C-GAE]),
//! the float64 twin of `kernels/gae.cu`.

/// Advantages and value targets of one sequence.
pub fn gae(
    rewards: &[f64],
    values: &[f64],
    mask: &[f64],
    gamma: f64,
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let t_len = rewards.len();
    let mut adv = vec![0.0; t_len];
    let mut ret = vec![0.0; t_len];
    let (mut next_a, mut next_v, mut next_m) = (0.0, 0.0, 0.0);
    for t in (0..t_len).rev() {
        let delta = rewards[t] + gamma * next_m * next_v - values[t];
        let a = mask[t] * (delta + gamma * lambda * next_a);
        adv[t] = a;
        ret[t] = mask[t] * (a + values[t]);
        (next_a, next_v, next_m) = (a, values[t], mask[t]);
    }
    (adv, ret)
}
