//! Checking a draft against the target's logits: greedy, rejection sampling, or match.
//!
//! [`verify`] gets the target's rows lazily (row `i` is the target's prediction after the
//! history plus the first `i` drafted tokens) and returns how many drafted tokens are accepted
//! and the one token the target adds. It never fails and knows nothing of models or caches.
//!
//! * [`VerifyMode::Greedy`]: accept while the drafted token is the target's argmax; emit the
//!   argmax at the first disagreement (or after the last drafted token).
//! * [`VerifyMode::Rejection`]: Leviathan et al. (arXiv 2211.17192) Algorithm 1: accept `x_i`
//!   with probability `min(1, p(x_i)/q(x_i))`; at the first rejection sample from
//!   `norm(max(0, p − q))` over the whole vocabulary; if all are accepted, sample the bonus token
//!   from `p_{K+1}`. The emitted text is distributed exactly as target-only sampling.
//! * [`VerifyMode::Match`]: sample `y_i ~ p_i` and accept while `y_i == x_i` (what llama.cpp's
//!   server does). Also exact, but accepts less.
//! * [`VerifyMode::Seeded`]: the target's token at position `i` is the Gumbel-max draw of
//!   `p_i` keyed by (seed, position) ([`Dist::sample_keyed`]), accepted while it equals the
//!   draft's. Exact like match, and the text depends only on the prompt, the settings and the
//!   seed: not on draft lengths, on other sequences, or on timing. A draft model drawing with
//!   the same keys proposes the target's own choice wherever the two agree on it.

use crate::model::Token;
use crate::sampling::{Dist, SamplingParams, Scratch};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How the target checks a draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Argmax agreement (temperature 0).
    Greedy,
    /// Rejection sampling with the residual distribution (exact, the default when sampling).
    Rejection,
    /// Sample the target and compare (exact, lower acceptance).
    Match,
    /// Draw each position's token from noise keyed by (seed, position) and compare (exact;
    /// the same seed gives the same text whatever was drafted; the default when sampling).
    Seeded,
}

impl VerifyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Greedy => "greedy",
            VerifyMode::Rejection => "rejection",
            VerifyMode::Match => "match",
            VerifyMode::Seeded => "seeded",
        }
    }

    /// Whether the drafter must sample from q and keep it.
    pub fn needs_q(self) -> bool {
        self == VerifyMode::Rejection
    }
}

/// The target's logits rows of one round, read in order: row `i` is the prediction after the
/// history and the first `i` drafted tokens. A constrained round masks each row as it is read
/// (the grammar's state follows the draft), so rows are asked for one at a time.
pub trait Rows {
    fn row(&mut self, i: usize) -> &[f32];
}

/// Rows read straight from a function (a model's logits), unmasked.
pub struct RowFn<'r>(pub &'r dyn Fn(usize) -> &'r [f32]);

impl Rows for RowFn<'_> {
    fn row(&mut self, i: usize) -> &[f32] {
        (self.0)(i)
    }
}

/// The result of checking one draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How many drafted tokens were accepted (a prefix of the draft).
    pub n_accepted: usize,
    /// The token the target adds after the accepted prefix.
    pub next: Token,
}

/// How a draft is checked: the mode, the seed that keys [`VerifyMode::Seeded`]'s draws, and the
/// sampling settings the target's rows are warped with.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRule<'a> {
    pub mode: VerifyMode,
    pub seed: u64,
    pub params: &'a SamplingParams,
}

/// Check `draft` (with its draft distributions `q` when the rule is rejection sampling)
/// against target rows `row(0..=draft.len())`. `history` holds the accepted tokens followed
/// by the draft, so that penalties see exactly the tokens before each position.
pub fn verify<R: Rng + ?Sized>(
    rule: &VerifyRule<'_>,
    rows: &mut dyn Rows,
    history: &[Token],
    draft: &[Token],
    q: &[Dist],
    scratch: &mut Scratch,
    rng: &mut R,
) -> Verdict {
    let VerifyRule { mode, seed, params } = *rule;
    let k = draft.len();
    let n_hist = history.len() - k;
    debug_assert!(!mode.needs_q() || q.len() == k, "rejection sampling needs q for every drafted token");
    for i in 0..=k {
        let logits = rows.row(i);
        let hist = &history[..n_hist + i];
        let drafted = draft.get(i).copied();
        let (accepted, target_choice) = match mode {
            VerifyMode::Greedy => {
                let y = scratch.argmax(logits, hist, params);
                (drafted == Some(y), y)
            }
            VerifyMode::Match => {
                let y = scratch.warp(logits, hist, params).sample(rng);
                (drafted == Some(y), y)
            }
            VerifyMode::Seeded => {
                let y = scratch.warp(logits, hist, params).sample_keyed(seed, hist.len());
                (drafted == Some(y), y)
            }
            VerifyMode::Rejection => {
                let p = scratch.warp(logits, hist, params);
                match drafted {
                    None => (false, p.sample(rng)),
                    Some(x) => {
                        let (px, qx) = (p.prob(x), q[i].prob(x));
                        // x was drawn from q, so qx > 0; accept with probability min(1, px/qx).
                        let u: f32 = rng.gen();
                        if qx > 0.0 && u * qx < px {
                            (true, x)
                        } else {
                            (false, scratch.sample_residual(&p, &q[i], logits.len(), rng))
                        }
                    }
                }
            }
        };
        if !accepted {
            return Verdict { n_accepted: i, next: target_choice };
        }
    }
    unreachable!("the row after the last drafted token always ends verification")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn one_hot_row(n: usize, t: Token) -> Vec<f32> {
        let mut r = vec![0.0; n];
        r[t as usize] = 5.0;
        r
    }

    #[test]
    fn greedy_accepts_the_agreeing_prefix_and_adds_the_target_choice() {
        // target wants 1, 2, 3, 4 ; draft says 1, 2, 9
        let rows: Vec<Vec<f32>> = [1, 2, 3, 4].iter().map(|&t| one_hot_row(10, t)).collect();
        let history = [7, 7, 1, 2, 9];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let v = verify(
            &VerifyRule { mode: VerifyMode::Greedy, seed: 0, params: &SamplingParams::greedy() },
            &mut RowFn(&|i| &rows[i]),
            &history,
            &[1, 2, 9],
            &[],
            &mut Scratch::new(),
            &mut rng,
        );
        assert_eq!(v, Verdict { n_accepted: 2, next: 3 });
        // fully accepted draft gets the bonus token from the last row
        let history = [7, 7, 1, 2, 3];
        let v = verify(
            &VerifyRule { mode: VerifyMode::Greedy, seed: 0, params: &SamplingParams::greedy() },
            &mut RowFn(&|i| &rows[i]),
            &history,
            &[1, 2, 3],
            &[],
            &mut Scratch::new(),
            &mut rng,
        );
        assert_eq!(v, Verdict { n_accepted: 3, next: 4 });
        // empty draft: plain decoding
        let v = verify(
            &VerifyRule { mode: VerifyMode::Greedy, seed: 0, params: &SamplingParams::greedy() },
            &mut RowFn(&|i| &rows[i]),
            &[7],
            &[],
            &[],
            &mut Scratch::new(),
            &mut rng,
        );
        assert_eq!(v, Verdict { n_accepted: 0, next: 1 });
    }

    #[test]
    fn rejection_accepts_everything_when_p_equals_q() {
        let logits = vec![0.1f32, 0.5, 0.2, 0.9];
        let params = SamplingParams { temp: 1.0, ..SamplingParams::greedy() };
        let q = Scratch::new().warp(&logits, &[], &params);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let x = q.sample(&mut rng);
            let v = verify(
                &VerifyRule { mode: VerifyMode::Rejection, seed: 0, params: &params },
                &mut RowFn(&|_| &logits),
                &[x],
                &[x],
                std::slice::from_ref(&q),
                &mut Scratch::new(),
                &mut rng,
            );
            assert_eq!(v.n_accepted, 1);
        }
    }

    #[test]
    fn rejection_never_emits_a_token_where_p_is_zero() {
        // target: top-1 makes p one-hot on 3; draft proposes 0 with q(0) = 1
        let logits = vec![0.0f32, 0.0, 0.0, 9.0];
        let params = SamplingParams { temp: 1.0, top_k: 1, ..SamplingParams::greedy() };
        let q = Dist::one_hot(0);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let v = verify(
                &VerifyRule { mode: VerifyMode::Rejection, seed: 0, params: &params },
                &mut RowFn(&|_| &logits),
                &[0],
                &[0],
                std::slice::from_ref(&q),
                &mut Scratch::new(),
                &mut rng,
            );
            assert_eq!(v, Verdict { n_accepted: 0, next: 3 });
        }
    }
}
