//! What a target decode costs by its shape (rows, sequences): a calibrated curve scaled by
//! what was measured, so plans can weigh a draft's rows against the tokens they may give.

use super::estimate::ema;
use serde::{Deserialize, Serialize};

/// A calibrated cost curve: the cost of one target decode of `b` tokens relative to a decode
/// of one token, at measured batch sizes (`specrun calibrate`), interpolated linearly between
/// them and extrapolated along the last segment. Its absolute scale is learned online.
///
/// With `seq_points` it also knows what spreading a decode over several sequences costs: a
/// decode of one token for each of `s` sequences, relative to one token of one sequence. A
/// decode of `b` rows over `s` sequences is then modelled as `relative(b) × seq_factor(s)`
/// (the extra cost of `s` separate attention streams, measured at `b = s`, applied to any
/// row count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostCurve {
    /// `(batch size, cost relative to batch size 1)`, sorted by batch size, starting at 1.
    pub points: Vec<(usize, f64)>,
    /// `(sequences, cost relative to batch size 1)` of a decode of one token for each of that
    /// many sequences, sorted; empty when not calibrated with several sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seq_points: Vec<(usize, f64)>,
}

/// Linear interpolation over sorted `(x, y)` points, extrapolated along the last segment (never
/// downwards); `None` without points.
pub(crate) fn interpolate(pts: &[(usize, f64)], x: usize) -> Option<f64> {
    Some(match pts.iter().position(|&(px, _)| px >= x) {
        Some(0) => pts[0].1,
        Some(i) if pts[i].0 == x => pts[i].1,
        Some(i) => {
            let ((x0, y0), (x1, y1)) = (pts[i - 1], pts[i]);
            y0 + (y1 - y0) * (x - x0) as f64 / (x1 - x0) as f64
        }
        None => match pts.len() {
            0 => return None,
            1 => pts[0].1 * x as f64 / pts[0].0.max(1) as f64,
            n => {
                let ((x0, y0), (x1, y1)) = (pts[n - 2], pts[n - 1]);
                let slope = ((y1 - y0) / (x1 - x0) as f64).max(0.0);
                y1 + slope * (x - x1) as f64
            }
        },
    })
}

impl CostCurve {
    /// From measured seconds per batch size (any order; must include batch size 1).
    pub fn from_seconds(secs: Vec<(usize, f64)>) -> Option<Self> {
        Self::from_seconds_with_seqs(secs, Vec::new())
    }

    /// From measured seconds per batch size (one sequence) and per number of sequences (one
    /// token each); the second may be empty.
    pub fn from_seconds_with_seqs(secs: Vec<(usize, f64)>, seq_secs: Vec<(usize, f64)>) -> Option<Self> {
        fn clean(mut v: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
            v.retain(|&(b, t)| b >= 1 && t.is_finite() && t > 0.0);
            v.sort_by_key(|&(b, _)| b);
            v.dedup_by_key(|&mut (b, _)| b);
            v
        }
        let secs = clean(secs);
        let (b0, t1) = *secs.first()?;
        if b0 != 1 {
            return None;
        }
        let rel = |v: Vec<(usize, f64)>| v.into_iter().map(|(b, t)| (b, t / t1)).collect::<Vec<_>>();
        Some(Self { points: rel(secs), seq_points: rel(clean(seq_secs)) })
    }

    /// Cost of a `b`-token decode (one sequence) relative to a 1-token decode.
    pub fn relative(&self, b: usize) -> f64 {
        interpolate(&self.points, b).unwrap_or(b as f64)
    }

    /// How much more a decode costs when its rows belong to `seqs` sequences rather than one
    /// (1 for one sequence, or without a several-sequence calibration).
    pub fn seq_factor(&self, seqs: usize) -> f64 {
        if seqs <= 1 {
            return 1.0;
        }
        match interpolate(&self.seq_points, seqs) {
            Some(c) => (c / self.relative(seqs)).max(1.0),
            None => 1.0,
        }
    }

    /// Cost of a decode of `rows` rows over `seqs` sequences relative to a 1-token decode.
    pub fn relative_shared(&self, rows: usize, seqs: usize) -> f64 {
        self.relative(rows) * self.seq_factor(seqs)
    }

    /// Cost of a decode of one token for each of `seqs` sequences relative to a 1-token decode
    /// (measured when calibrated with several sequences, else the one-sequence curve).
    pub fn relative_seqs(&self, seqs: usize) -> f64 {
        self.relative_shared(seqs, seqs)
    }

    /// The largest batch size measured.
    pub fn max_batch(&self) -> usize {
        self.points.last().map_or(1, |p| p.0)
    }
}

/// Verification cost by batch shape (EMA seconds per target decode of `rows` tokens over
/// `seqs` sequences), over a calibrated [`CostCurve`] when there is one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyCosts {
    seen: std::collections::BTreeMap<(usize, usize), f64>,
    curve: Option<std::sync::Arc<CostCurve>>,
}

impl VerifyCosts {
    /// A decode of `batch` tokens of one sequence took `secs` seconds.
    pub fn observe(&mut self, batch: usize, secs: f64) {
        self.observe_shared(batch, 1, secs);
    }

    /// A decode of `rows` tokens over `seqs` sequences took `secs` seconds.
    pub fn observe_shared(&mut self, rows: usize, seqs: usize, secs: f64) {
        let key = (rows, seqs.max(1));
        let old = self.seen.get(&key).copied();
        self.seen.insert(key, ema(old, secs));
    }

    /// Every decode shape measured so far: `((rows, sequences), EMA seconds)`.
    pub fn measured(&self) -> Vec<((usize, usize), f64)> {
        self.seen.iter().map(|(&k, &t)| (k, t)).collect()
    }

    /// Over the calibrated `curve` when there is one, else learned from the decodes alone.
    pub fn from_curve(curve: Option<std::sync::Arc<CostCurve>>) -> Self {
        curve.map_or_else(Self::default, Self::with_curve)
    }

    /// Costs that follow `curve` for batch sizes not measured yet.
    pub fn with_curve(curve: std::sync::Arc<CostCurve>) -> Self {
        Self { seen: Default::default(), curve: Some(curve) }
    }

    /// Whether a one-token decode of one sequence was measured.
    pub fn knows_one_token(&self) -> bool {
        self.seen.contains_key(&(1, 1))
    }

    /// Estimated seconds to verify `batch` tokens of one sequence.
    pub fn estimate(&self, batch: usize) -> Option<f64> {
        self.estimate_shared(batch, 1)
    }

    /// Estimated seconds of a decode of `rows` tokens over `seqs` sequences: measured if that
    /// shape was seen; else, with a calibrated curve, the curve's cost of that shape scaled by
    /// what was measured **near** it (ratios of measured to curve cost, weighted by closeness
    /// in rows and sequences: a curve taken at another context depth or machine load is
    /// corrected locally, and a shape far from anything measured leans on its nearest
    /// neighbours rather than on an average dominated by small decodes); else an affine fit
    /// in rows through what was seen (a prior slope of 0.3 of a 1-token step per extra token
    /// when only one size is known).
    pub fn estimate_shared(&self, rows: usize, seqs: usize) -> Option<f64> {
        let seqs = seqs.max(1);
        if let Some(t) = self.seen.get(&(rows, seqs)) {
            return Some(*t);
        }
        if self.seen.is_empty() {
            return None;
        }
        if let Some(curve) = &self.curve {
            let (mut wsum, mut lsum) = (0.0, 0.0);
            for (&(r, s), &t) in &self.seen {
                let d = r.abs_diff(rows) as f64 + 2.0 * s.abs_diff(seqs) as f64;
                let w = 1.0 / (1.0 + d).powi(2);
                wsum += w;
                lsum += w * (t / curve.relative_shared(r, s)).ln();
            }
            return Some((lsum / wsum).exp() * curve.relative_shared(rows, seqs));
        }
        // without a curve: one point per row count (the mean over sequence counts)
        let mut by_rows: Vec<(f64, f64, f64)> = Vec::new();
        for (&(r, _), &t) in &self.seen {
            match by_rows.last_mut() {
                Some(last) if last.0 == r as f64 => {
                    last.1 += t;
                    last.2 += 1.0;
                }
                _ => by_rows.push((r as f64, t, 1.0)),
            }
        }
        let by_rows: Vec<(f64, f64)> = by_rows.into_iter().map(|(r, t, n)| (r, t / n)).collect();
        match by_rows.len() {
            0 => None,
            1 => {
                let (b0, t0) = by_rows[0];
                let base = t0 / (1.0 + 0.3 * (b0 - 1.0));
                Some(base * (1.0 + 0.3 * (rows as f64 - 1.0)))
            }
            _ => {
                let n = by_rows.len() as f64;
                let (mb, mt) = (by_rows.iter().map(|s| s.0).sum::<f64>() / n, by_rows.iter().map(|s| s.1).sum::<f64>() / n);
                let cov: f64 = by_rows.iter().map(|s| (s.0 - mb) * (s.1 - mt)).sum();
                let var: f64 = by_rows.iter().map(|s| (s.0 - mb).powi(2)).sum();
                let slope = (cov / var).max(0.0);
                Some((mt + slope * (rows as f64 - mb)).max(1e-9))
            }
        }
    }
}
