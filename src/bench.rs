//! Bench results: statistics over repeats, the predicted speed-up, and the exports (table,
//! CSV, Markdown, JSON, an SVG plot, and the auto-tuned `models.toml`).
//!
//! Pure: the `specrun bench` command (`crate::bench_cmd`) measures, this module summarises and
//! renders. Everything rendered from the same results is byte-for-byte the same.

use crate::control::expected_tokens;
use crate::stats::GenStats;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

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
}

impl BenchConfig {
    pub fn label(&self) -> String {
        format!("{} {} {} K={} T={}", self.pair, self.drafter, self.adaptive, self.draft_max, self.temp)
    }
}

/// What one repeat measured, the target-only and the speculative runs each summed over the
/// prompts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepeatSample {
    pub base: GenStats,
    pub spec: GenStats,
}

impl RepeatSample {
    /// Add one prompt's target-only and speculative runs.
    pub fn add(&mut self, base: &GenStats, spec: &GenStats) {
        self.base.merge(base);
        self.spec.merge(spec);
    }
    pub fn spec_tok_s(&self) -> f64 {
        self.spec.decode_tok_per_s()
    }
    pub fn base_tok_s(&self) -> f64 {
        self.base.decode_tok_per_s()
    }
    pub fn speedup(&self) -> f64 {
        ratio(self.spec_tok_s(), self.base_tok_s())
    }
}

/// A configuration's summary over its repeats (also read back by `--from-json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    #[serde(flatten)]
    pub config: BenchConfig,
    pub repeats: usize,
    pub spec_tok_s: f64,
    pub base_tok_s: f64,
    pub speedup: f64,
    pub speedup_min: f64,
    pub speedup_max: f64,
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
}

impl BenchResult {
    pub fn summarise(config: BenchConfig, samples: &[RepeatSample]) -> Self {
        let speedups: Vec<f64> = samples.iter().map(RepeatSample::speedup).collect();
        let (lo, hi) = min_max(&speedups);
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
        Self {
            repeats: samples.len(),
            spec_tok_s: median(&samples.iter().map(RepeatSample::spec_tok_s).collect::<Vec<_>>()),
            base_tok_s: median(&samples.iter().map(RepeatSample::base_tok_s).collect::<Vec<_>>()),
            speedup: median(&speedups),
            speedup_min: lo,
            speedup_max: hi,
            acceptance_rate: spec.acceptance_rate(),
            alpha,
            tokens_per_round: spec.tokens_per_round(),
            acceptance_by_position: spec.acceptance_by_position(),
            cost_ratio: c,
            verify_cost_ratio: v,
            predicted_speedup_ideal: if drafted { predicted_speedup(alpha, k, c, 1.0) } else { 1.0 },
            predicted_speedup: if drafted && v > 0.0 { predicted_speedup(alpha, k, c, v) } else { 1.0 },
            config,
        }
    }
}

const COLUMNS: [&str; 14] = [
    "pair", "drafter", "adaptive", "K", "temp", "tok/s", "base tok/s", "speed-up", "min-max", "acceptance", "tokens/round",
    "c", "verify cost", "predicted (ideal / measured verify)",
];

fn row(r: &BenchResult) -> [String; 14] {
    [
        r.config.pair.clone(),
        r.config.drafter.clone(),
        r.config.adaptive.clone(),
        r.config.draft_max.to_string(),
        format!("{}", r.config.temp),
        format!("{:.2}", r.spec_tok_s),
        format!("{:.2}", r.base_tok_s),
        format!("{:.2}x", r.speedup),
        format!("{:.2}-{:.2}", r.speedup_min, r.speedup_max),
        format!("{:.1}% (α {:.2})", 100.0 * r.acceptance_rate, r.alpha),
        format!("{:.2}", r.tokens_per_round),
        format!("{:.2}", r.cost_ratio),
        format!("{:.2}", r.verify_cost_ratio),
        format!("{:.2}x / {:.2}x", r.predicted_speedup_ideal, r.predicted_speedup),
    ]
}

/// An aligned plain-text table for the terminal.
pub fn table(results: &[BenchResult]) -> String {
    let rows: Vec<[String; 14]> = results.iter().map(row).collect();
    let widths: Vec<usize> =
        (0..COLUMNS.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([COLUMNS[i].len()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(COLUMNS.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A GitHub-flavoured Markdown table.
pub fn markdown(results: &[BenchResult]) -> String {
    let mut out = format!("| {} |\n|{}|\n", COLUMNS.join(" | "), vec!["---"; COLUMNS.len()].join("|"));
    for r in results {
        let _ = writeln!(out, "| {} |", row(r).join(" | "));
    }
    out
}

/// CSV with a header line.
pub fn csv(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "pair,drafter,adaptive,draft_max,temp,repeats,spec_tok_s,base_tok_s,speedup,speedup_min,speedup_max,acceptance_rate,alpha,tokens_per_round,cost_ratio,verify_cost_ratio,predicted_speedup_ideal,predicted_speedup,acceptance_by_position\n",
    );
    for r in results {
        let by_pos: Vec<String> = r.acceptance_by_position.iter().map(|a| format!("{a:.4}")).collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{}",
            r.config.pair,
            r.config.drafter,
            r.config.adaptive,
            r.config.draft_max,
            r.config.temp,
            r.repeats,
            r.spec_tok_s,
            r.base_tok_s,
            r.speedup,
            r.speedup_min,
            r.speedup_max,
            r.acceptance_rate,
            r.alpha,
            r.tokens_per_round,
            r.cost_ratio,
            r.verify_cost_ratio,
            r.predicted_speedup_ideal,
            r.predicted_speedup,
            by_pos.join(" ")
        );
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Speed-up against draft length, one line per pair/drafter/policy/temperature, with the
/// break-even line at 1.0x and min-max whiskers.
pub fn svg_plot(results: &[BenchResult], title: &str) -> String {
    const W: f64 = 760.0;
    const H: f64 = 440.0;
    const L: f64 = 70.0;
    const R: f64 = 250.0;
    const T: f64 = 50.0;
    const B: f64 = 60.0;
    let ks: Vec<usize> = {
        let mut v: Vec<usize> = results.iter().map(|r| r.config.draft_max).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let k_max = *ks.last().unwrap_or(&1) as f64;
    // y from 0 to a multiple of 0.25 above the largest value, ticks every 0.25 (1.0x is one)
    let y_hi = (results.iter().map(|r| r.speedup_max).fold(1.2f64, f64::max) * 1.05 / 0.25).ceil() * 0.25;
    let y_lo = 0.0;
    let x = |k: f64| L + (W - L - R) * if k_max > 0.0 { k / k_max } else { 0.0 };
    let y = |v: f64| T + (H - T - B) * (1.0 - (v - y_lo) / (y_hi - y_lo));
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
    let mut s = String::new();
    let _ = writeln!(s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"13\">");
    let _ = writeln!(s, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"{}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">{}</text>", (W - R + L) / 2.0, xml_escape(title));
    // axes and grid
    let steps = (y_hi / 0.25).round() as usize;
    for i in 0..=steps {
        let v = y_lo + (y_hi - y_lo) * i as f64 / steps as f64;
        let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e5e5e5\"/>", W - R, y(v), y(v));
        let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}x</text>", L - 8.0, y(v) + 4.0);
    }
    for &k in &ks {
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{k}</text>", x(k as f64), H - B + 20.0);
    }
    let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{L}\" y1=\"{T}\" y2=\"{}\" stroke=\"black\"/>", H - B);
    let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>", W - R, H - B, H - B);
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">draft length K</text>", (W - R + L) / 2.0, H - 15.0);
    let _ = writeln!(s, "<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">speed-up vs target-only (median, min-max)</text>", (H - B + T) / 2.0, (H - B + T) / 2.0);
    // break-even
    let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"6 4\"/>", W - R, y(1.0), y(1.0));
    let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">target-only</text>", W - R - 4.0, y(1.0) - 5.0);
    // one series per configuration without K
    let mut series: Vec<(String, Vec<&BenchResult>)> = Vec::new();
    for r in results {
        let key = format!("{} {} {} T={}", r.config.pair, r.config.drafter, r.config.adaptive, r.config.temp);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => series.push((key, vec![r])),
        }
    }
    for (i, (name, pts)) in series.iter_mut().enumerate() {
        pts.sort_by_key(|r| r.config.draft_max);
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts.iter().map(|r| format!("{:.1},{:.1}", x(r.config.draft_max as f64), y(r.speedup))).collect();
        let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for r in pts.iter() {
            let cx = x(r.config.draft_max as f64);
            let _ = writeln!(s, "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>", y(r.speedup_min), y(r.speedup_max));
            let _ = writeln!(s, "<circle cx=\"{cx:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>", y(r.speedup));
        }
        let ly = T + 10.0 + 20.0 * i as f64;
        let _ = writeln!(s, "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/>", W - R + 15.0, W - R + 40.0);
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">{}</text>", W - R + 46.0, ly + 4.0, xml_escape(name));
    }
    s.push_str("</svg>\n");
    s
}

/// The best configuration per pair (highest median speed-up).
pub fn best_per_pair(results: &[BenchResult]) -> Vec<&BenchResult> {
    let mut best: Vec<&BenchResult> = Vec::new();
    for r in results {
        match best.iter_mut().find(|b| b.config.pair == r.config.pair) {
            Some(b) if r.speedup > b.speedup => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best
}

/// Write the best settings of each pair into a `models.toml` text, keeping its comments and
/// layout. A pair whose best measured speed-up is below 1 gets `adaptive = "auto"`, so that it
/// falls back to plain decoding where speculation does not pay. `note` becomes a comment
/// above the pair (date and machine).
pub fn write_best(models_toml: &str, results: &[BenchResult], note: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = models_toml.parse().map_err(|e: toml_edit::TomlError| e.to_string())?;
    for best in best_per_pair(results) {
        let pairs = doc.get_mut("pairs").and_then(|p| p.as_table_like_mut()).ok_or("no [pairs] table")?;
        let pair = pairs
            .get_mut(&best.config.pair)
            .and_then(|p| p.as_table_like_mut())
            .ok_or_else(|| format!("no pair '{}' in the models file", best.config.pair))?;
        let pays = best.speedup >= 1.0;
        pair.insert("draft_max", toml_edit::value(best.config.draft_max as i64));
        pair.insert("drafter", toml_edit::value(best.config.drafter.clone()));
        pair.insert("adaptive", toml_edit::value(if pays { best.config.adaptive.clone() } else { "auto".to_string() }));
        let comment = format!(
            "# tuned by specrun bench ({note}): best {} at {:.2}x target-only{}\n",
            best.config.label(),
            best.speedup,
            if pays { "" } else { "; nothing beat plain decoding, so adaptive = \"auto\" falls back to it" }
        );
        if let Some(t) = doc.get_mut("pairs").and_then(|p| p.get_mut(&best.config.pair)).and_then(|p| p.as_table_mut()) {
            let decor = t.decor_mut();
            let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("").to_string();
            let kept: String = prefix.lines().filter(|l| !l.starts_with("# tuned by specrun bench")).map(|l| format!("{l}\n")).collect();
            decor.set_prefix(format!("{kept}{comment}"));
        }
    }
    Ok(doc.to_string())
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
            ..GenStats::default()
        };
        let mut s = RepeatSample::default();
        s.add(&base, &spec);
        s
    }

    #[test]
    fn summaries_take_medians_over_repeats_and_measured_ratios() {
        let c = BenchConfig { pair: "p".into(), drafter: "model".into(), adaptive: "fixed".into(), draft_max: 4, temp: 0.0 };
        let r = BenchResult::summarise(c, &[sample(10.0, 10.0), sample(5.0, 10.0), sample(20.0, 10.0)]);
        assert_eq!(r.speedup, 1.0);
        assert_eq!((r.speedup_min, r.speedup_max), (0.5, 2.0));
        assert_eq!(r.acceptance_rate, 0.75);
        assert_eq!(r.alpha, 0.8);
        assert_eq!(r.acceptance_by_position, vec![0.9, 0.8, 0.7, 0.6]);
        // base step: 30 s / 300 rounds = 0.1 s; draft step 12 s / 240 = 0.05 s; verify 12 / 60 = 0.2 s
        assert!((r.cost_ratio - 0.5).abs() < 1e-12);
        assert!((r.verify_cost_ratio - 2.0).abs() < 1e-12);
        // k = 240 drafted / 60 drafted rounds = 4
        assert!((r.predicted_speedup - expected_tokens(0.8, 4.0) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn write_best_keeps_comments_and_marks_the_pair() {
        let toml = "# top comment\n\n[models.a]\npath = \"a.gguf\" # the file\n\n# the pair\n[pairs.p]\ndraft = \"a\"\ntarget = \"a\"\ndraft_max = 4\n";
        let mk = |k, s: f64| {
            let c = BenchConfig { pair: "p".into(), drafter: "ngram".into(), adaptive: "fixed".into(), draft_max: k, temp: 0.0 };
            let mut r = BenchResult::summarise(c, &[sample(10.0, 10.0)]);
            r.speedup = s;
            r
        };
        let out = write_best(toml, &[mk(2, 1.1), mk(6, 1.4)], "2026-11-26, 2 cores").unwrap();
        assert!(out.starts_with("# top comment\n"), "{out}");
        assert!(out.contains("path = \"a.gguf\" # the file"), "{out}");
        assert!(out.contains("# the pair\n# tuned by specrun bench (2026-11-26, 2 cores): best p ngram fixed K=6 T=0 at 1.40x"), "{out}");
        assert!(out.contains("draft_max = 6"), "{out}");
        assert!(out.contains("drafter = \"ngram\""), "{out}");
        // tuning again replaces the note instead of piling them up
        let again = write_best(&out, &[mk(3, 0.9)], "later").unwrap();
        assert_eq!(again.matches("# tuned by specrun bench").count(), 1, "{again}");
        assert!(again.contains("adaptive = \"auto\""), "{again}");
        let parsed = crate::config::Config::parse("models.toml", &again).unwrap();
        assert_eq!(parsed.pair("p").unwrap().draft_max, 3);
    }
}
