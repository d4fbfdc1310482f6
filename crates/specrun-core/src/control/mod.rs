//! Deciding, round by round, how much to speculate: fixed, a simple step rule, or the
//! cost-aware controller that falls back to plain decoding when speculation does not pay.
//!
//! The cost-aware rule ([`AdaptiveMode::Auto`]) keeps, per draft source (draft model, n-gram):
//! an acceptance estimate `α` (accepted tokens over accepted tokens plus rejections, decayed
//! so it follows the text) — for n-gram drafts one per copy-run length, since a copy that has
//! lasted long tends to go on ([`Controller::reach`]) —, the cost of one draft step, and the
//! cost of verifying a batch of `b` tokens (a calibrated curve scaled by what was measured,
//! see [`VerifyCosts`]). It then picks the draft length `k` that maximises expected tokens per
//! unit of time, `E(k) / T(k)` with `E(k) = 1 + Σ_{j≤k} P(first j accepted)` (`(1 −
//! α^(k+1)) / (1 − α)` for one α) and `T(k) = k·c_draft + t_verify(k+1)`.
//! A draft model first drafts two rounds at `min(K, 4)` (after one plain round that measures
//! the 1-token cost), so that α is measured before drafting can be switched off; n-gram drafts
//! are planned from the copy run's evidence from the first round.
//! `k = 0` is plain decoding; while it wins, a probe round drafts anyway now and then, so that a
//! text that turns predictable is noticed. Probes back off exponentially (the interval doubles
//! after each probe that did not resume drafting). A draft *model* that sat out has to catch up
//! on every token it missed before it can draft, which on a CPU costs a good part of what
//! the skipped rounds saved, so its probes start far further apart than n-gram probes, and its
//! step cost is learned only from rounds without a catch-up.
//!
//! Architecture invariant: no clock is read here; durations come in through [`Observation`].

mod allocate;
mod controller;
mod cost;
mod estimate;
mod guard;

pub use allocate::{allocate_drafts, DraftAsk, DraftYield, PROBE_BUDGET};
pub use controller::{Controller, SharedPrior, EXPLORE_LEN, PROBE_LEN};
#[cfg(any(test, feature = "mock"))]
pub(crate) use cost::interpolate;
pub use cost::{CostCurve, VerifyCosts};
pub use estimate::{expected_tokens, geometric_reach, Observation};
pub use guard::{DraftGuard, GUARD_FIRST_PAUSE, GUARD_WINDOW};

use serde::{Deserialize, Serialize};

/// How the draft length is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AdaptiveMode {
    /// Always `draft_max`.
    Fixed,
    /// +2 after a fully accepted draft, −1 otherwise, within 1..=draft_max.
    Step,
    /// Maximise expected tokens per second from measured acceptance and costs; fall back to
    /// plain decoding when drafting does not pay.
    Auto,
}

#[cfg(test)]
mod tests {
    use super::allocate::YIELD_MIN;
    use super::controller::MODEL_PRIOR;
    use super::estimate::DECAY;
    use super::*;
    use crate::draft::DraftSource;
    use std::time::Duration;

    fn obs(source: DraftSource, k: usize, accepted: usize, t_draft_ms: u64, t_verify_ms: u64) -> Observation {
        Observation {
            source,
            k_planned: k,
            n_drafted: k,
            n_accepted: accepted,
            run: 0,
            n_draft_steps: if source == DraftSource::Model { k } else { 0 },
            draft_gap: 1,
            n_verified: k + 1,
            t_draft: Duration::from_millis(t_draft_ms),
            t_verify: Duration::from_millis(t_verify_ms),
        }
    }

    #[test]
    fn the_draft_yield_is_the_realised_share_once_there_is_evidence() {
        let mut y = DraftYield::default();
        y.observe(10.0, 5.0);
        assert_eq!(y.factor(), 1.0, "10 expected tokens are too little evidence");
        y.observe(10.0, 5.0);
        assert!((y.factor() - 0.5).abs() < 1e-12);
        // never above 1, never below the floor
        let mut good = DraftYield::default();
        good.observe(20.0, 30.0);
        assert_eq!(good.factor(), 1.0);
        let mut bad = DraftYield::default();
        bad.observe(20.0, 0.0);
        assert_eq!(bad.factor(), YIELD_MIN);
        // old rounds fade: after many rounds at 0.9 the factor is near 0.9
        for _ in 0..200 {
            bad.observe(10.0, 9.0);
        }
        assert!((bad.factor() - 0.9).abs() < 0.01, "{}", bad.factor());
        bad.observe(f64::NAN, 1.0);
        assert!((bad.factor() - 0.9).abs() < 0.01);
        // plain rounds let the evidence fade until the drafts are planned as estimated again
        let mut faded = DraftYield::default();
        faded.observe(40.0, 0.0);
        assert_eq!(faded.factor(), YIELD_MIN);
        let mut rounds = 0;
        while faded.factor() < 1.0 {
            faded.observe(0.0, 0.0);
            rounds += 1;
        }
        assert!((20..40).contains(&rounds), "{rounds} plain rounds");
    }

    #[test]
    fn expected_tokens_follows_the_geometric_series() {
        assert_eq!(expected_tokens(0.0, 4.0), 1.0);
        assert!((expected_tokens(0.5, 2.0) - 1.75).abs() < 1e-12);
        assert_eq!(expected_tokens(1.0, 4.0), 5.0);
    }

    #[test]
    fn step_rule_goes_up_two_on_full_acceptance_and_down_one_otherwise() {
        let mut c = Controller::new(AdaptiveMode::Step, 8);
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 4);
        c.observe(&obs(DraftSource::Model, 4, 4, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 6);
        c.observe(&obs(DraftSource::Model, 6, 6, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 8);
        c.observe(&obs(DraftSource::Model, 8, 8, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 8, "capped by draft_max");
        c.observe(&obs(DraftSource::Model, 8, 3, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 7);
        assert_eq!(c.plan(DraftSource::Model, 2, 0), 2, "capped by the round's limit");
        for _ in 0..20 {
            c.observe(&obs(DraftSource::Model, 1, 0, 10, 50));
        }
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 1, "never below 1");
    }

    #[test]
    fn a_shared_prior_skips_exploration_and_starts_at_the_pooled_rate() {
        // one sequence that learned the n-gram drafter is poor here: 1 of 8 tokens accepted
        let mut old = Controller::new(AdaptiveMode::Auto, 8);
        old.observe(&obs(DraftSource::Ngram, 0, 0, 0, 100));
        for _ in 0..4 {
            old.observe(&obs(DraftSource::Ngram, 4, 0, 0, 210));
        }
        let mut prior = SharedPrior::default();
        prior.add(&old);
        let mut fresh = Controller::new(AdaptiveMode::Auto, 8);
        fresh.seed(&prior);
        // the pool holds 4 rounds (= 2 × EXPLORE_ROUNDS) of all-rejected drafts
        assert_eq!(fresh.forced_len(DraftSource::Ngram, 8), None, "no forced exploration");
        assert!(fresh.reach(DraftSource::Ngram, 0, 1)[0] < 0.05);
        assert_eq!(fresh.forced_len(DraftSource::Model, 8), Some(4), "the model drafter was never seen: explored as before");
        // too little evidence: nothing changes
        let mut thin = Controller::new(AdaptiveMode::Auto, 8);
        thin.observe(&obs(DraftSource::Ngram, 4, 0, 0, 210));
        let mut small = SharedPrior::default();
        small.add(&thin);
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.seed(&small);
        assert_eq!(c, Controller::new(AdaptiveMode::Auto, 8));
    }

    #[test]
    fn catch_up_rounds_do_not_count_as_step_costs() {
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.observe(&obs(DraftSource::Model, 0, 0, 0, 100));
        c.observe(&obs(DraftSource::Model, 4, 4, 200, 210));
        let clean = c.model_step_cost().unwrap();
        let mut catch_up = obs(DraftSource::Model, 4, 4, 2000, 210);
        catch_up.draft_gap = 40;
        c.observe(&catch_up);
        assert_eq!(c.model_step_cost().unwrap(), clean);
    }

    #[test]
    fn verify_costs_interpolate_affinely() {
        let mut v = VerifyCosts::default();
        assert_eq!(v.estimate(3), None);
        v.observe(1, 0.100);
        assert!((v.estimate(5).unwrap() - 0.100 * 2.2).abs() < 1e-9, "prior slope 0.3");
        v.observe(5, 0.210);
        assert!((v.estimate(3).unwrap() - 0.155).abs() < 1e-9);
        assert!((v.estimate(9).unwrap() - 0.320).abs() < 1e-9);
    }

    /// A 2-core CPU's costs: a draft step costs 0.5 of a target step, verifying 5 tokens 2.1x one.
    fn slow_draft_costs(c: &mut Controller, accepted_of_4: usize, rounds: usize) {
        c.observe(&obs(DraftSource::Model, 0, 0, 0, 100));
        for _ in 0..rounds {
            c.observe(&obs(DraftSource::Model, 4, accepted_of_4, 200, 210));
        }
    }

    #[test]
    fn auto_falls_back_to_plain_decoding_when_drafting_costs_more_than_it_gains() {
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 0, "first round measures a plain step");
        slow_draft_costs(&mut c, 2, 30);
        // alpha ~ 2/3: E(k)/T(k) < 1/t1 for every k -> plain
        assert_eq!(c.best_k(DraftSource::Model, 8, 0), Some(0));
        let mut plans = vec![];
        for _ in 0..16 {
            let k = c.plan(DraftSource::Model, 8, 0);
            plans.push(k);
            c.observe(&obs(DraftSource::Model, k, k.min(1), 50 * k as u64, 100 + 25 * k as u64));
        }
        let probes = plans.iter().filter(|&&k| k > 0).count();
        assert_eq!(probes, 0, "plain, the draft model probed only rarely: {plans:?}");
        // probes back off: 256 rounds, then 512, ...
        let mut plans = vec![];
        for _ in 0..1200 {
            let k = c.plan(DraftSource::Model, 8, 0);
            plans.push(k);
            c.observe(&obs(DraftSource::Model, k, k.min(1), 100 * k as u64, 100 + 25 * k as u64));
        }
        let at: Vec<usize> = plans.iter().enumerate().filter(|(_, &k)| k > 0).map(|(i, _)| i).collect();
        assert!(!at.is_empty() && at.len() <= 3, "probes at {at:?}");
        assert!(at.windows(2).all(|w| w[1] - w[0] > 256), "probes at {at:?}");
        // n-gram probes cost no catch-up: they come sooner
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.observe(&obs(DraftSource::Ngram, 0, 0, 0, 100));
        for _ in 0..4 {
            c.observe(&obs(DraftSource::Ngram, 4, 0, 0, 300));
        }
        let ks: Vec<usize> = (0..40)
            .map(|_| {
                let k = c.plan(DraftSource::Ngram, 8, 0);
                c.observe(&obs(DraftSource::Ngram, k, 0, 0, 100 + 50 * k as u64));
                k
            })
            .collect();
        assert!(ks.iter().filter(|&&k| k > 0).count() >= 1, "{ks:?}");
    }

    #[test]
    fn auto_drafts_long_when_drafts_are_cheap_and_accepted() {
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.observe(&obs(DraftSource::Model, 0, 0, 0, 100));
        for _ in 0..30 {
            c.observe(&obs(DraftSource::Model, 4, 4, 20, 130));
        }
        let k = c.plan(DraftSource::Model, 8, 0);
        assert!(k >= 6, "cheap, always-accepted drafts should be long, got {k}");
        // n-grams cost nothing to draft: even a mediocre acceptance pays
        for _ in 0..20 {
            c.observe(&obs(DraftSource::Ngram, 4, 2, 0, 130));
        }
        assert!(c.plan(DraftSource::Ngram, 8, 0) > 0);
        assert_eq!(c.plan(DraftSource::None, 8, 0), 0);
    }

    #[test]
    fn a_curve_interpolates_extrapolates_and_scales_to_what_was_measured() {
        // this CPU (llama-bench): 1, 1.5, 2.7, 6.2, 8.1, 8.4, 16.7 steps for 1..32 tokens
        let secs = [(1, 0.08), (2, 0.12), (4, 0.216), (8, 0.496), (12, 0.648), (16, 0.672), (32, 1.336)];
        let curve = CostCurve::from_seconds(secs.to_vec()).unwrap();
        assert!((curve.relative(1) - 1.0).abs() < 1e-12);
        assert!((curve.relative(12) - 8.1).abs() < 1e-9);
        assert!((curve.relative(14) - 8.25).abs() < 1e-9, "between 12 and 16");
        assert!((curve.relative(64) - (16.7 + (16.7 - 8.4) / 16.0 * 32.0)).abs() < 1e-9, "along the last segment");
        assert!(CostCurve::from_seconds(vec![(2, 0.1)]).is_none(), "needs batch size 1");
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(curve));
        assert_eq!(v.estimate(16), None, "no scale before a measurement");
        v.observe(1, 0.1);
        assert!((v.estimate(16).unwrap() - 0.84).abs() < 1e-9, "scaled by the 1-token cost");
        // a 16-token decode that was this time cheaper than the curve says counts as measured
        v.observe(16, 0.7);
        assert_eq!(v.estimate(16), Some(0.7));
        // between them, the scale leans on the nearer measurement (weights 1/(1+distance)²)
        let (s1, s16) = (0.1 / 1.0, 0.7 / 8.4);
        let (w1, w16) = (1.0 / 144.0, 1.0 / 25.0);
        let scale = ((w1 * f64::ln(s1) + w16 * f64::ln(s16)) / (w1 + w16)).exp();
        assert!((v.estimate(12).unwrap() - scale * 8.1).abs() < 1e-9);
        assert!(v.estimate(12).unwrap() < (s1 + s16) / 2.0 * 8.1, "nearer 16's cheaper scale than the mean");
    }

    #[test]
    fn probes_of_many_sequences_share_a_small_budget_unless_rows_are_free() {
        let probe = DraftAsk { reach: geometric_reach(0.1, 4), cap: 4, min: 2, draft_cost: 0.0 };
        let asks = vec![probe; 16];
        // this CPU: 16 rows 9.3, 18 rows ~10.9 one-row decodes
        let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.6), (4, 2.6), (8, 6.9), (16, 9.3), (20, 12.5), (48, 23.5)]).unwrap();
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(cpu));
        v.observe_shared(16, 16, 0.34);
        let ks = allocate_drafts(&asks, &v, 512, 1.0).unwrap();
        let honoured = ks.iter().filter(|&&k| k > 0).count();
        assert!(honoured <= 1, "at most one probe fits 10% of a 16-row decode here: {ks:?}");
        // a GPU-like curve: everyone probes
        let flat = CostCurve::from_seconds(vec![(1, 1.0), (64, 1.05)]).unwrap();
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(flat));
        v.observe_shared(16, 16, 0.02);
        assert!(allocate_drafts(&asks, &v, 512, 1.0).unwrap().iter().all(|&k| k >= 2));
    }

    #[test]
    fn several_sequences_cost_what_the_calibration_measured_for_them() {
        // one sequence: 1, 2, 4, 16 rows cost 1, 1.6, 2.6, 8.6; sixteen sequences with one row each cost 10.2
        let curve =
            CostCurve::from_seconds_with_seqs(vec![(1, 0.04), (2, 0.064), (4, 0.104), (16, 0.344)], vec![(2, 0.072), (16, 0.408)]).unwrap();
        assert!((curve.seq_factor(1) - 1.0).abs() < 1e-12);
        assert!((curve.seq_factor(16) - 10.2 / 8.6).abs() < 1e-9);
        assert!((curve.seq_factor(2) - 1.8 / 1.6).abs() < 1e-9);
        assert!((curve.relative_seqs(16) - 10.2).abs() < 1e-9);
        assert!((curve.relative_shared(20, 16) - curve.relative(20) * 10.2 / 8.6).abs() < 1e-9);
        // without a several-sequence calibration, sequences cost nothing extra
        assert_eq!(CostCurve::from_seconds(vec![(1, 0.04), (16, 0.344)]).unwrap().seq_factor(16), 1.0);
        // measured shapes win; unmeasured ones follow the curve, scaled near what was measured
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(curve));
        v.observe_shared(16, 16, 0.5);
        assert_eq!(v.estimate_shared(16, 16), Some(0.5));
        let at_20 = v.estimate_shared(20, 16).unwrap();
        assert!((at_20 - 0.5 / 10.2 * curve_rel(20) * 10.2 / 8.6).abs() < 1e-9, "{at_20}");
        v.observe(1, 0.04);
        // one sequence's cost barely moves the estimate for sixteen
        let at_20_now = v.estimate_shared(20, 16).unwrap();
        assert!((at_20_now - at_20).abs() / at_20 < 0.01, "{at_20} → {at_20_now}");
    }

    fn curve_rel(b: usize) -> f64 {
        CostCurve::from_seconds(vec![(1, 0.04), (2, 0.064), (4, 0.104), (16, 0.344)]).unwrap().relative(b)
    }

    #[test]
    fn on_a_flat_curve_auto_drafts_long_and_a_copy_run_lengthens_drafts() {
        // a GPU-like curve: 16 tokens cost 1.2 of one
        let flat = CostCurve { points: vec![(1, 1.0), (16, 1.2), (64, 2.0)], seq_points: vec![] };
        let mut c = Controller::with_curve(AdaptiveMode::Auto, 16, Some(std::sync::Arc::new(flat)));
        c.observe(&Observation {
            source: DraftSource::Ngram,
            k_planned: 0,
            n_drafted: 0,
            n_accepted: 0,
            run: 0,
            n_draft_steps: 0,
            draft_gap: 1,
            n_verified: 1,
            t_draft: Duration::ZERO,
            t_verify: Duration::from_millis(100),
        });
        for _ in 0..4 {
            c.observe(&obs(DraftSource::Model, 4, 3, 0, 110));
        }
        let k = c.best_k(DraftSource::Model, 16, 0).unwrap();
        assert!(k >= 8, "a cheap long verification pays at α ≈ 0.75: k = {k}");
        // on this CPU's curve a plain n-gram α of 0.75 drafts short, a long copy run long
        let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.5), (4, 2.7), (8, 6.2), (12, 8.1), (16, 8.4), (32, 16.7)]).unwrap();
        let mut c = Controller::with_curve(AdaptiveMode::Auto, 16, Some(std::sync::Arc::new(cpu)));
        c.observe(&Observation {
            source: DraftSource::Ngram,
            k_planned: 0,
            n_drafted: 0,
            n_accepted: 0,
            run: 0,
            n_draft_steps: 0,
            draft_gap: 1,
            n_verified: 1,
            t_draft: Duration::ZERO,
            t_verify: Duration::from_millis(100),
        });
        for _ in 0..4 {
            c.observe(&obs(DraftSource::Ngram, 4, 3, 0, 270));
        }
        let short = c.best_k(DraftSource::Ngram, 16, 0).unwrap();
        let long = c.best_k(DraftSource::Ngram, 16, 400).unwrap();
        assert!(short <= 4 && long > short, "short {short}, long {long}");
        assert!(c.reach(DraftSource::Ngram, 400, 1)[0] > 0.97, "a long run's prior: Laplace's rule");
    }

    #[test]
    fn n_gram_acceptance_is_learned_per_copy_run_length() {
        let mut c = Controller::new(AdaptiveMode::Auto, 16);
        // n-gram drafts are planned from the start; a draft model explores its first rounds
        assert_eq!(c.forced_len(DraftSource::Ngram, 8), None);
        assert_eq!(c.forced_len(DraftSource::Model, 8), Some(4));
        // priors: run 0 the source's 0.6; runs 1–2 Laplace at 1.5; runs 3–6 at 4.5
        let (a1, a2) = (2.5 / 3.5, 5.5 / 6.5);
        let r = c.reach(DraftSource::Ngram, 0, 4);
        let want = [0.6, 0.6 * a1, 0.6 * a1 * a1, 0.6 * a1 * a1 * a2];
        for (got, want) in r.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        // from a run of 1, four drafted, two accepted: runs 1 and 2 count for, run 3 against
        c.observe(&Observation { run: 1, ..obs(DraftSource::Ngram, 4, 2, 0, 100) });
        let b1 = (2.0 * a1 * DECAY + 2.0) / (2.0 * DECAY + 2.0);
        let b2 = 2.0 * a2 * DECAY / (2.0 * DECAY + 1.0);
        let r = c.reach(DraftSource::Ngram, 1, 3);
        assert!((r[0] - b1).abs() < 1e-12 && (r[1] - b1 * b1).abs() < 1e-12 && (r[2] - b1 * b1 * b2).abs() < 1e-12, "{r:?}");
        // the draft model keeps one α
        let m = c.reach(DraftSource::Model, 7, 3);
        assert!((m[2] - MODEL_PRIOR.powi(3)).abs() < 1e-12);
    }

    #[test]
    fn short_copy_runs_that_fail_stop_drafting_and_long_ones_that_hold_draft_long() {
        // this CPU's curve: a draft token costs most of a decode, so only sure ones pay
        let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.8), (4, 3.2), (8, 7.9), (12, 10.1), (16, 9.9), (32, 17.4)]).unwrap();
        let mut c = Controller::with_curve(AdaptiveMode::Auto, 16, Some(std::sync::Arc::new(cpu)));
        c.observe(&obs(DraftSource::Ngram, 0, 0, 0, 100));
        // before any evidence a 4-token match plans on Laplace's 0.85: one token at most
        let before = c.best_k(DraftSource::Ngram, 16, 4).unwrap();
        assert!(before <= 1, "{before}");
        // a text where 4-token matches (a JSON key, say) are wrong at once, while copies that
        // reached 20 tokens went on to the end of every draft
        for _ in 0..6 {
            c.observe(&Observation { run: 4, ..obs(DraftSource::Ngram, 3, 0, 0, 300) });
            c.observe(&Observation { run: 20, ..obs(DraftSource::Ngram, 15, 15, 0, 990) });
        }
        assert_eq!(c.best_k(DraftSource::Ngram, 16, 4), Some(0), "short runs: plain decoding");
        let long = c.best_k(DraftSource::Ngram, 16, 20).unwrap();
        assert!(long >= 15, "long runs: the cheap 16-row decode or longer, got {long}");
        // one α for the source (most drafted tokens were accepted) would have drafted after a
        // 4-token match too: one token pays at α above 0.8 here
        let alpha = c.estimate(DraftSource::Ngram).alpha();
        assert!(alpha > 0.9, "α {alpha}");
    }

    #[test]
    fn the_guard_pauses_drafting_that_measured_slower_than_plain_and_tries_again() {
        let mut g = DraftGuard::default();
        // plain rounds of 4 sequences: 0.4 s for 4 tokens
        g.observe(4, 0, 4, 0.4, None);
        // drafted rounds: 0.6 s for 5 tokens (plain would give 6 in that time)
        for _ in 0..GUARD_WINDOW - 1 {
            g.observe(4, 4, 5, 0.6, None);
            assert!(g.allows(4));
        }
        g.observe(4, 4, 5, 0.6, None);
        assert!(!g.allows(4));
        assert_eq!(g.n_pauses, 1);
        for i in 0..GUARD_FIRST_PAUSE {
            assert!(!g.allows(4), "paused round {i}");
            g.observe(4, 0, 4, 0.4, None);
        }
        assert!(g.allows(4));
        assert_eq!(g.n_paused_rounds, GUARD_FIRST_PAUSE);
        // still slower: twice as long a pause
        for _ in 0..GUARD_WINDOW {
            g.observe(4, 4, 5, 0.6, None);
        }
        for _ in 0..2 * GUARD_FIRST_PAUSE {
            assert!(!g.allows(4));
            g.observe(4, 0, 4, 0.4, None);
        }
        assert!(g.allows(4));
        // drafting that pays (8 tokens where plain gives 6) resets the pause
        for _ in 0..GUARD_WINDOW {
            g.observe(4, 4, 8, 0.6, None);
        }
        assert!(g.allows(4));
        for _ in 0..GUARD_WINDOW {
            g.observe(4, 4, 5, 0.6, None);
        }
        for _ in 0..GUARD_FIRST_PAUSE {
            assert!(!g.allows(4));
            g.observe(4, 0, 4, 0.4, None);
        }
        assert!(g.allows(4));
    }

    #[test]
    fn the_guard_compares_with_plain_rounds_of_as_many_sequences() {
        let mut g = DraftGuard::default();
        // plain rounds of 2 sequences are fast, of 8 slow; drafted rounds of 8 sequences that
        // beat plain rounds of 8 keep drafting on, whatever rounds of 2 cost
        g.observe(2, 0, 2, 0.1, None);
        g.observe(8, 0, 8, 1.0, None);
        for _ in 0..GUARD_WINDOW {
            g.observe(8, 4, 10, 1.1, None);
        }
        assert!(g.allows(8));
        // without a measured plain round of 3 sequences, the estimate stands in (3 tokens in
        // 0.2 s, so 4.5 in 0.3 s): 4 tokens in 0.3 s lose
        for _ in 0..GUARD_WINDOW {
            g.observe(3, 2, 4, 0.3, Some(0.2));
        }
        assert!(!g.allows(3));
        // a verdict about rounds of 3 sequences says nothing about rounds of 8 or 2
        assert!(g.allows(8) && g.allows(2));
        // rounds of other sizes do not use up the pause of rounds of 3
        for _ in 0..2 * GUARD_FIRST_PAUSE {
            g.observe(8, 0, 8, 1.0, None);
        }
        assert!(!g.allows(3));
        // nothing to compare with: no verdict
        let mut g = DraftGuard::default();
        for _ in 0..3 * GUARD_WINDOW {
            g.observe(3, 2, 1, 9.0, None);
        }
        assert!(g.allows(3));
    }
}
