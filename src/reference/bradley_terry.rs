//! The Bradley-Terry preference loss (Eq. 1) and its invariance ([C-BTL]).

use super::losses::log_sigmoid;

/// `-log sigma(r_w - r_l)`: the negative log-likelihood that the chosen
/// response beats the rejected one.
pub fn bt_loss(reward_chosen: f64, reward_rejected: f64) -> f64 {
    -log_sigmoid(reward_chosen - reward_rejected)
}
