//! What specrun prints about a generation: the stats block (stderr) and the JSON records
//! (stdout, one object per line).
//!
//! # JSON schema of `specrun run --json`
//!
//! One line, a [`RunReport`]:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `text` | string | generated text |
//! | `finish_reason` | `"stop"`, `"length"`, `"context"` | why generation ended |
//! | `drafter` | string | `"model"`, `"ngram"`, `"hybrid"` or `"none"` |
//! | `adaptive` | string | `"fixed"`, `"step"` or `"auto"` |
//! | `verify` | string | `"greedy"`, `"rejection"` or `"match"` |
//! | `draft_max` | int | largest draft per round |
//! | `n_prompt`, `n_generated` | int | token counts |
//! | `n_rounds` | int | target decodes after the prompt |
//! | `n_drafted`, `n_accepted` | int | drafted tokens, accepted drafted tokens |
//! | `acceptance_rate` | float | `n_accepted / n_drafted` |
//! | `tokens_per_round` | float | generated tokens per target decode |
//! | `acceptance_by_position` | array of float | acceptance at draft positions 1..K |
//! | `rounds_model`, `rounds_ngram`, `rounds_plain` | int | rounds drafted by each source, and rounds without a draft (fallback) |
//! | `mean_k` | float | mean draft length chosen per round |
//! | `n_forced`, `n_forced_accepted` | int | tokens a constraint forced (drafted ahead of any drafter's, counted in `n_drafted`), and accepted |
//! | `n_closing`, `n_closing_accepted` | int | tokens drafted where the grammar refused a drafter's token (a closing token and what the grammar forces after it, counted in `n_drafted`), and accepted |
//! | `n_likely`, `n_likely_accepted` | int | tokens drafted as the likely spelling of text the grammar forces after its forced tokens (a quote before a value, counted in `n_drafted`), and accepted |
//! | `n_masks` | int | grammar masks computed (0 without a constraint) |
//! | `n_rows_unread` | int | target rows decoded without logits, the grammar allowing one token there |
//! | `t_prompt_s`, `t_draft_s`, `t_verify_s`, `t_other_s`, `t_decode_s` | float | seconds |
//! | `decode_tok_per_s`, `prompt_tok_per_s` | float | throughput |
//! | `placement` | object | `target` (and `draft`): `devices`, `gpu_layers`, `cache_type_k`, `cache_type_v`, `kv_offload`, `kv_unified`, `flash_attn`, `batch_invariant`, and `summary` (the line the stats block prints) |
//!
//! `specrun run --compare --json` prints a [`CompareReport`]: `target_only` and `speculative`
//! (each a [`RunReport`]), `speedup` (decode tok/s ratio) and `identical` (same text).

use serde::{Deserialize, Serialize};
use specrun_core::stats::{FinishReason, GenStats};
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    pub text: String,
    pub finish_reason: String,
    pub drafter: String,
    pub adaptive: String,
    pub verify: String,
    pub draft_max: usize,
    pub n_prompt: usize,
    /// Prompt tokens not read: kept in the slot or restored from the prefix cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_prompt_cached: usize,
    pub n_generated: usize,
    pub n_rounds: usize,
    pub n_drafted: usize,
    pub n_accepted: usize,
    pub acceptance_rate: f64,
    pub tokens_per_round: f64,
    pub acceptance_by_position: Vec<f64>,
    pub rounds_model: usize,
    pub rounds_ngram: usize,
    pub rounds_plain: usize,
    pub mean_k: f64,
    #[serde(default)]
    pub n_forced: usize,
    #[serde(default)]
    pub n_forced_accepted: usize,
    #[serde(default)]
    pub n_closing: usize,
    #[serde(default)]
    pub n_closing_accepted: usize,
    #[serde(default)]
    pub n_likely: usize,
    #[serde(default)]
    pub n_likely_accepted: usize,
    #[serde(default)]
    pub n_rows_unread: usize,
    #[serde(default)]
    pub n_masks: usize,
    pub t_prompt_s: f64,
    pub t_draft_s: f64,
    pub t_verify_s: f64,
    pub t_other_s: f64,
    pub t_decode_s: f64,
    pub decode_tok_per_s: f64,
    pub prompt_tok_per_s: f64,
    /// Where each model ran (`run --json`; not in batch records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// Where the models ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(deserialize_with = "model_placement")]
    pub target: ModelPlacement,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "optional_model_placement")]
    pub draft: Option<ModelPlacement>,
}

/// A placement as fields, or as the one line that results written before the fields hold.
#[derive(Deserialize)]
#[serde(untagged)]
enum PlacementRepr {
    Fields(ModelPlacement),
    Line(String),
}

impl From<PlacementRepr> for ModelPlacement {
    fn from(r: PlacementRepr) -> Self {
        match r {
            PlacementRepr::Fields(p) => p,
            PlacementRepr::Line(summary) => ModelPlacement {
                devices: Vec::new(),
                gpu_layers: 0,
                cache_type_k: String::new(),
                cache_type_v: String::new(),
                kv_offload: true,
                kv_unified: true,
                flash_attn: String::new(),
                batch_invariant: false,
                summary,
            },
        }
    }
}

fn model_placement<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ModelPlacement, D::Error> {
    PlacementRepr::deserialize(d).map(ModelPlacement::from)
}

fn optional_model_placement<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ModelPlacement>, D::Error> {
    Option::<PlacementRepr>::deserialize(d).map(|r| r.map(ModelPlacement::from))
}

/// Where one model ran, as fields, and as the one line the stats block prints (`summary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPlacement {
    /// Devices by llama.cpp's name (empty: llama.cpp's choice; `["none"]`: the CPU).
    pub devices: Vec<String>,
    pub gpu_layers: u32,
    pub cache_type_k: String,
    pub cache_type_v: String,
    /// The KV cache in device memory (`false`: `--no-kv-offload`).
    pub kv_offload: bool,
    /// One KV buffer shared by the sequences in flight.
    pub kv_unified: bool,
    /// `on`, `off` or `auto`.
    pub flash_attn: String,
    /// `--deterministic`: batch-invariant kernels.
    pub batch_invariant: bool,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareReport {
    pub target_only: RunReport,
    pub speculative: RunReport,
    pub speedup: f64,
    pub identical: bool,
}

impl RunReport {
    pub fn new(
        text: String,
        finish: FinishReason,
        drafter: &str,
        adaptive: specrun_core::control::AdaptiveMode,
        verify: &str,
        draft_max: usize,
        s: &GenStats,
    ) -> Self {
        Self {
            text,
            finish_reason: finish.as_str().into(),
            drafter: drafter.into(),
            adaptive: format!("{adaptive:?}").to_lowercase(),
            verify: verify.into(),
            draft_max,
            n_prompt: s.n_prompt,
            n_generated: s.n_generated,
            n_rounds: s.n_rounds,
            n_drafted: s.n_drafted,
            n_accepted: s.n_accepted,
            acceptance_rate: s.acceptance_rate(),
            tokens_per_round: s.tokens_per_round(),
            acceptance_by_position: s.acceptance_by_position(),
            rounds_model: s.n_rounds_model,
            rounds_ngram: s.n_rounds_ngram,
            rounds_plain: s.n_rounds_undrafted,
            mean_k: s.mean_k_planned(),
            n_forced: s.n_forced,
            n_forced_accepted: s.n_forced_accepted,
            n_closing: s.n_closing,
            n_closing_accepted: s.n_closing_accepted,
            n_likely: s.n_likely,
            n_likely_accepted: s.n_likely_accepted,
            n_rows_unread: s.n_rows_unread,
            n_prompt_cached: s.n_prompt_cached,
            n_masks: s.n_masks,
            t_prompt_s: s.t_prompt.as_secs_f64(),
            t_draft_s: s.t_draft.as_secs_f64(),
            t_verify_s: s.t_verify.as_secs_f64(),
            t_other_s: s.t_other().as_secs_f64(),
            t_decode_s: s.t_decode.as_secs_f64(),
            decode_tok_per_s: s.decode_tok_per_s(),
            prompt_tok_per_s: s.prompt_tok_per_s(),
            placement: None,
        }
    }

    /// The human-readable stats block.
    pub fn stats_block(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "specrun: drafter {}  adaptive {}  draft_max {}  verify {}  finish {}",
            self.drafter, self.adaptive, self.draft_max, self.verify, self.finish_reason
        );
        let _ = writeln!(o, "  prompt     {:>6} tokens {:>8.2} s {:>8.1} tok/s", self.n_prompt, self.t_prompt_s, self.prompt_tok_per_s);
        let _ = writeln!(o, "  generated  {:>6} tokens {:>8.2} s {:>8.1} tok/s", self.n_generated, self.t_decode_s, self.decode_tok_per_s);
        let _ = writeln!(
            o,
            "  rounds     {:>6}   drafted {}  accepted {}  acceptance {:.1}%  tokens/round {:.2}",
            self.n_rounds,
            self.n_drafted,
            self.n_accepted,
            100.0 * self.acceptance_rate,
            self.tokens_per_round
        );
        if !self.acceptance_by_position.is_empty() {
            let by_pos: Vec<String> = self.acceptance_by_position.iter().map(|a| format!("{:.2}", a)).collect();
            let _ = writeln!(o, "  acceptance by position 1..{}: {}", by_pos.len(), by_pos.join(" "));
        }
        if self.drafter != "none" {
            let _ = writeln!(
                o,
                "  rounds by drafter: model {}  ngram {}  plain {}   mean draft length {:.2}",
                self.rounds_model, self.rounds_ngram, self.rounds_plain, self.mean_k
            );
        }
        if self.n_masks > 0 {
            let _ = writeln!(
                o,
                "  grammar    forced {} tokens, {} accepted   likely {}, {} accepted   closing {}, {} accepted   masks {}   rows unread {}",
                self.n_forced,
                self.n_forced_accepted,
                self.n_likely,
                self.n_likely_accepted,
                self.n_closing,
                self.n_closing_accepted,
                self.n_masks,
                self.n_rows_unread
            );
        }
        let _ = writeln!(o, "  time       draft {:.2} s  verify {:.2} s  other {:.2} s", self.t_draft_s, self.t_verify_s, self.t_other_s);
        if let Some(p) = &self.placement {
            let _ = writeln!(o, "  target on  {}", p.target.summary);
            if let Some(d) = &p.draft {
                let _ = writeln!(o, "  draft on   {}", d.summary);
            }
        }
        o
    }
}

impl CompareReport {
    pub fn new(target_only: RunReport, speculative: RunReport) -> Self {
        let speedup = if target_only.decode_tok_per_s > 0.0 { speculative.decode_tok_per_s / target_only.decode_tok_per_s } else { 0.0 };
        let identical = target_only.text == speculative.text;
        Self { target_only, speculative, speedup, identical }
    }

    pub fn summary(&self) -> String {
        format!(
            "compare: target-only {:.2} tok/s, speculative {:.2} tok/s, speed-up {:.2}x, outputs {}\n",
            self.target_only.decode_tok_per_s,
            self.speculative.decode_tok_per_s,
            self.speedup,
            if self.identical { "identical" } else { "DIFFER" }
        )
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
