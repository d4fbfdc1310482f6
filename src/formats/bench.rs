//! Bench results: statistics over repeats, the predicted speed-up, and the exports (table,
//! CSV, Markdown, JSON, an SVG plot, and the auto-tuned `models.toml`).
//!
//! Pure: the `specrun bench` command (`crate::commands::bench`) measures, this module summarises and
//! renders. Everything rendered from the same results is byte-for-byte the same.

use serde::{Deserialize, Serialize};
use specrun_core::control::expected_tokens;
use specrun_core::stats::GenStats;

/// Median of `xs` (mean of the middle two for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest of `xs`; (0, 0) for none.
pub fn min_max(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// Leviathan et al.'s speed-up for acceptance `alpha`, draft length `k` and draft cost `c`
/// (a draft step over a target step), with verification of `k + 1` tokens costing
/// `verify_cost` target steps (1 is the paper's ideal).
pub fn predicted_speedup(alpha: f64, k: f64, c: f64, verify_cost: f64) -> f64 {
    ratio(expected_tokens(alpha, k), k * c + verify_cost)
}

/// One configuration of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    pub pair: String,
    pub drafter: String,
    pub adaptive: String,
    pub draft_max: usize,
    pub temp: f32,
    /// Sequences in flight (`--parallel`): above 1 the prompts run through continuous
    /// batching and the tok/s columns are aggregate rates over the shared decode rounds.
    #[serde(default = "one")]
    pub parallel: usize,
}

fn one() -> usize {
    1
}

impl BenchConfig {
    pub fn label(&self) -> String {
        let n = if self.parallel > 1 { format!(" N={}", self.parallel) } else { String::new() };
        format!("{} {} {} K={} T={}{n}", self.pair, self.drafter, self.adaptive, self.draft_max, self.temp)
    }
}

/// What one repeat measured, the target-only and the speculative runs each summed over the
/// prompts, and (one sequence at a time) each prompt's own pair of runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepeatSample {
    pub base: GenStats,
    pub spec: GenStats,
    /// `(target-only, speculative)` per prompt, in prompt order; empty when the prompts shared
    /// decodes (`--parallel` above 1: a prompt has no decode time of its own).
    pub prompts: Vec<(GenStats, GenStats)>,
}

impl RepeatSample {
    /// Add the summed runs of prompts that shared their decodes.
    pub fn add(&mut self, base: &GenStats, spec: &GenStats) {
        self.base.merge(base);
        self.spec.merge(spec);
    }
    /// Add one prompt's own target-only and speculative runs.
    pub fn add_prompt(&mut self, base: &GenStats, spec: &GenStats) {
        self.add(base, spec);
        self.prompts.push((base.clone(), spec.clone()));
    }
}

/// A configuration's summary over its repeats (also read back by `--from-json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    #[serde(flatten)]
    pub config: BenchConfig,
    pub repeats: usize,
    #[serde(flatten)]
    pub rates: Rates,
    /// Accepted over drafted tokens.
    pub acceptance_rate: f64,
    /// Per-token acceptance of the geometric model (accepted over accepted + rejections).
    pub alpha: f64,
    pub tokens_per_round: f64,
    pub acceptance_by_position: Vec<f64>,
    /// Draft step / 1-token target step.
    pub cost_ratio: f64,
    /// Verifying a drafted batch / 1-token target step.
    pub verify_cost_ratio: f64,
    /// Leviathan's formula with ideal verification, and with the measured verify cost.
    pub predicted_speedup_ideal: f64,
    pub predicted_speedup: f64,
    /// The controller's own prediction: the rate its plans expected of the rounds it planned
    /// with known costs (acceptance estimates for the tokens, the cost model for the time)
    /// over the measured target-only rate; 0 when nothing was planned so.
    #[serde(default)]
    pub planned_speedup: f64,
    /// Those rounds' emitted ÷ expected tokens and measured ÷ expected seconds (where a plan
    /// went wrong: acceptance, or cost).
    #[serde(default)]
    pub plan_tokens_ratio: f64,
    #[serde(default)]
    pub plan_time_ratio: f64,
    /// The target's calibrated cost curve the run planned with (`specrun calibrate`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_curve: Option<specrun_core::control::CostCurve>,
    /// Where the models ran (device, GPU layers, KV types, flash attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::formats::report::Placement>,
    /// Each prompt's own result, in prompt order (one sequence at a time only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<PromptResult>,
}

/// One prompt of a configuration, over the repeats: which prompts gain and which lose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptResult {
    /// The record's `id` (or its line), as `bench` was given it.
    pub id: String,
    #[serde(flatten)]
    pub rates: Rates,
    pub acceptance_rate: f64,
    pub tokens_per_round: f64,
}

/// Over the repeats of one configuration (or one prompt of it): the median speculative and
/// target-only rates, the median of their ratio and its range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub spec_tok_s: f64,
    pub base_tok_s: f64,
    /// Median over the repeats of the speculative ÷ target-only rate.
    pub speedup: f64,
    pub speedup_min: f64,
    pub speedup_max: f64,
}

impl Rates {
    /// From each repeat's `(target-only, speculative)` stats.
    fn over<'a>(runs: impl Iterator<Item = (&'a GenStats, &'a GenStats)>) -> Self {
        let (mut spec, mut base, mut speedups) = (Vec::new(), Vec::new(), Vec::new());
        for (b, s) in runs {
            spec.push(s.decode_tok_per_s());
            base.push(b.decode_tok_per_s());
            speedups.push(ratio(s.decode_tok_per_s(), b.decode_tok_per_s()));
        }
        let (speedup_min, speedup_max) = min_max(&speedups);
        Self { spec_tok_s: median(&spec), base_tok_s: median(&base), speedup: median(&speedups), speedup_min, speedup_max }
    }
}

impl PromptResult {
    /// Summarise prompt `i` of every repeat (`None` when a repeat lacks it).
    fn summarise(id: String, i: usize, samples: &[RepeatSample]) -> Option<Self> {
        let runs: Vec<&(GenStats, GenStats)> = samples.iter().map(|s| s.prompts.get(i)).collect::<Option<_>>()?;
        let rates = Rates::over(runs.iter().map(|(b, s)| (b, s)));
        let mut spec = GenStats::default();
        for (_, s) in &runs {
            spec.merge(s);
        }
        Some(Self { id, rates, acceptance_rate: spec.acceptance_rate(), tokens_per_round: spec.tokens_per_round() })
    }
}

impl BenchResult {
    /// Summarise the repeats of one configuration; `ids` name the prompts (per-prompt results
    /// are kept when every repeat measured each prompt on its own).
    pub fn summarise(config: BenchConfig, samples: &[RepeatSample], ids: &[String]) -> Self {
        let rates = Rates::over(samples.iter().map(|s| (&s.base, &s.spec)));
        // ratios from the repeats pooled; speeds as medians over repeats
        let (mut base, mut spec) = (GenStats::default(), GenStats::default());
        for s in samples {
            base.merge(&s.base);
            spec.merge(&s.spec);
        }
        let secs = |d: std::time::Duration| d.as_secs_f64();
        let drafted_rounds = (spec.n_rounds - spec.n_rounds_undrafted) as f64;
        let base_step = ratio(secs(base.t_decode), base.n_rounds as f64);
        let draft_step = ratio(secs(spec.t_draft), spec.n_draft_steps as f64);
        let verify_step = ratio(secs(spec.t_verify_drafted), drafted_rounds);
        // α of the geometric model; k: the mean length of the drafts actually verified
        let alpha = spec.alpha();
        let k = ratio(spec.n_drafted as f64, drafted_rounds);
        let c = ratio(draft_step, base_step);
        let v = ratio(verify_step, base_step);
        let drafted = spec.n_drafted > 0;
        let plan = spec.plan_check;
        let base_rate = ratio(base.n_generated as f64, secs(base.t_decode));
        Self {
            repeats: samples.len(),
            rates,
            acceptance_rate: spec.acceptance_rate(),
            alpha,
            tokens_per_round: spec.tokens_per_round(),
            acceptance_by_position: spec.acceptance_by_position(),
            cost_ratio: c,
            verify_cost_ratio: v,
            predicted_speedup_ideal: if drafted { predicted_speedup(alpha, k, c, 1.0) } else { 1.0 },
            predicted_speedup: if drafted && v > 0.0 { predicted_speedup(alpha, k, c, v) } else { 1.0 },
            planned_speedup: ratio(plan.expected_rate(), base_rate),
            plan_tokens_ratio: plan.tokens_ratio(),
            plan_time_ratio: plan.time_ratio(),
            cost_curve: None,
            placement: None,
            prompts: ids.iter().enumerate().map_while(|(i, id)| PromptResult::summarise(id.clone(), i, samples)).collect(),
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_min_max() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(min_max(&[2.0, -1.0, 5.0]), (-1.0, 5.0));
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }

    #[test]
    fn leviathan_formula() {
        // alpha 0.8, K 4: E = (1 - 0.8^5) / 0.2 = 3.3616
        assert!((predicted_speedup(0.8, 4.0, 0.0, 1.0) - 3.3616).abs() < 1e-9);
        assert!((predicted_speedup(0.8, 4.0, 0.5, 1.0) - 3.3616 / 3.0).abs() < 1e-9);
        assert!((predicted_speedup(0.8, 4.0, 0.5, 2.1) - 3.3616 / 4.1).abs() < 1e-9);
    }

    fn sample(spec_s: f64, base_s: f64) -> RepeatSample {
        use std::time::Duration;
        let base = GenStats { n_generated: 100, n_rounds: 100, t_decode: Duration::from_secs_f64(base_s), ..GenStats::default() };
        let spec = GenStats {
            n_generated: 100,
            n_rounds: 40,
            n_rounds_undrafted: 20,
            n_drafted: 80,
            n_accepted: 60,
            n_rejections: 15,
            n_draft_steps: 80,
            drafted_at: vec![20, 20, 20, 20],
            accepted_at: vec![18, 16, 14, 12],
            t_decode: Duration::from_secs_f64(spec_s),
            t_draft: Duration::from_secs(4),
            t_verify: Duration::from_secs(6),
            t_verify_drafted: Duration::from_secs(4),
            plan_check: specrun_core::stats::PlanCheck { n_rounds: 40, expected_tokens: 50.0, expected_secs: 4.0, n_tokens: 40, secs: 5.0 },
            ..GenStats::default()
        };
        let mut s = RepeatSample::default();
        s.add(&base, &spec);
        s
    }

    #[test]
    fn summaries_take_medians_over_repeats_and_measured_ratios() {
        let c = BenchConfig { pair: "p".into(), drafter: "model".into(), adaptive: "fixed".into(), draft_max: 4, temp: 0.0, parallel: 1 };
        let r = BenchResult::summarise(c, &[sample(10.0, 10.0), sample(5.0, 10.0), sample(20.0, 10.0)], &[]);
        assert!(r.prompts.is_empty());
        assert_eq!(r.rates.speedup, 1.0);
        assert_eq!((r.rates.speedup_min, r.rates.speedup_max), (0.5, 2.0));
        assert_eq!(r.acceptance_rate, 0.75);
        assert_eq!(r.alpha, 0.8);
        assert_eq!(r.acceptance_by_position, vec![0.9, 0.8, 0.7, 0.6]);
        // base step: 30 s / 300 rounds = 0.1 s; draft step 12 s / 240 = 0.05 s; verify 12 / 60 = 0.2 s
        assert!((r.cost_ratio - 0.5).abs() < 1e-12);
        assert!((r.verify_cost_ratio - 2.0).abs() < 1e-12);
        // k = 240 drafted / 60 drafted rounds = 4
        assert!((r.predicted_speedup - expected_tokens(0.8, 4.0) / 4.0).abs() < 1e-12);
        // plans: 3 × (50 tokens expected in 4 s; 40 emitted in 5 s); base 300 tokens in 30 s
        assert!((r.planned_speedup - 12.5 / 10.0).abs() < 1e-12);
        assert!((r.plan_tokens_ratio - 0.8).abs() < 1e-12);
        assert!((r.plan_time_ratio - 1.25).abs() < 1e-12);
    }
}
