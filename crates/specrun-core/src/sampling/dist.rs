//! A sparse probability distribution over token ids, and the draws from it: weighted, and
//! keyed by (seed, position) for seeded verification.

use crate::model::Token;
use rand::Rng;

/// A probability distribution over token ids, stored sparsely: `ids[i]` has probability
/// `probs[i]`; every other token has probability 0. `ids[0]` is the most likely token; the
/// rest are sorted by decreasing probability unless the distribution is longer than 4,096
/// tokens (temperature-only warps of a whole vocabulary are not sorted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dist {
    pub ids: Vec<Token>,
    pub probs: Vec<f32>,
}

impl Dist {
    pub fn one_hot(token: Token) -> Self {
        Self { ids: vec![token], probs: vec![1.0] }
    }

    /// The most likely token and its probability.
    pub fn top(&self) -> (Token, f32) {
        (self.ids[0], self.probs[0])
    }

    /// Probability of `token` (linear scan: distributions after top-k are short; use
    /// [`super::Scratch`] lookups for long ones).
    pub fn prob(&self, token: Token) -> f32 {
        self.ids.iter().position(|&t| t == token).map_or(0.0, |i| self.probs[i])
    }

    /// Draw a token.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Token {
        sample_weighted(&self.ids, &self.probs, rng)
    }

    /// Draw the token for position `pos` of a sequence sampled with `seed`: the Gumbel-max
    /// choice `argmax_t log p(t) + g(seed, pos, t)`, its noise a pure function of the three
    /// (so the draw at a position never depends on what was drawn, drafted or decoded before).
    /// Distributed as `p`; equal seeds, positions and distributions give equal tokens. Written
    /// as the exponential race `argmin_t E(seed, pos, t) / p(t)`, which is the same choice.
    pub fn sample_keyed(&self, seed: u64, pos: usize) -> Token {
        let mut best = (f64::INFINITY, self.ids[0]);
        for (&t, &p) in self.ids.iter().zip(&self.probs) {
            if p > 0.0 {
                let arrival = exponential(seed, pos as u64, t) / f64::from(p);
                if arrival < best.0 {
                    best = (arrival, t);
                }
            }
        }
        best.1
    }
}

/// A unit exponential draw that is a pure function of (seed, position, token): splitmix64 over
/// the three, then `-ln(u)` with `u` in (0, 1].
fn exponential(seed: u64, pos: u64, token: Token) -> f64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let z = mix(mix(mix(seed) ^ pos) ^ u64::from(token as u32));
    let u = ((z >> 11) + 1) as f64 / (1u64 << 53) as f64;
    -u.ln()
}

/// Draw from unnormalised non-negative weights (the last id absorbs rounding).
pub(super) fn sample_weighted<R: Rng + ?Sized>(ids: &[Token], weights: &[f32], rng: &mut R) -> Token {
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let mut u = rng.gen::<f64>() * total;
    for (&id, &w) in ids.iter().zip(weights) {
        u -= f64::from(w);
        if u < 0.0 {
            return id;
        }
    }
    // Rounding: fall back to the last token with non-zero weight.
    ids.iter().zip(weights).rev().find(|(_, &w)| w > 0.0).map_or(ids[0], |(&id, _)| id)
}
