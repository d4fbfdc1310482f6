//! Bench results as an SVG plot of speed-up against draft length (`--plot`).

use crate::formats::bench::BenchResult;
use std::fmt::Write as _;

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
    let y_hi = (results.iter().map(|r| r.rates.speedup_max).fold(1.2f64, f64::max) * 1.05 / 0.25).ceil() * 0.25;
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
    let _ = writeln!(
        s,
        "<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">speed-up vs target-only (median, min-max)</text>",
        (H - B + T) / 2.0,
        (H - B + T) / 2.0
    );
    // break-even
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"6 4\"/>",
        W - R,
        y(1.0),
        y(1.0)
    );
    let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">target-only</text>", W - R - 4.0, y(1.0) - 5.0);
    // one series per configuration without K
    let mut series: Vec<(String, Vec<&BenchResult>)> = Vec::new();
    for r in results {
        let key = format!("{} {} {} T={} N={}", r.config.pair, r.config.drafter, r.config.adaptive, r.config.temp, r.config.parallel);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => series.push((key, vec![r])),
        }
    }
    for (i, (name, pts)) in series.iter_mut().enumerate() {
        pts.sort_by_key(|r| r.config.draft_max);
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts.iter().map(|r| format!("{:.1},{:.1}", x(r.config.draft_max as f64), y(r.rates.speedup))).collect();
        let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for r in pts.iter() {
            let cx = x(r.config.draft_max as f64);
            let _ = writeln!(
                s,
                "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>",
                y(r.rates.speedup_min),
                y(r.rates.speedup_max)
            );
            let _ = writeln!(s, "<circle cx=\"{cx:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>", y(r.rates.speedup));
        }
        let ly = T + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/>",
            W - R + 15.0,
            W - R + 40.0
        );
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">{}</text>", W - R + 46.0, ly + 4.0, xml_escape(name));
    }
    s.push_str("</svg>\n");
    s
}
