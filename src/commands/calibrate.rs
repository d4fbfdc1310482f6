//! `specrun calibrate`: measure the target's decode cost for batch sizes 1..64, for one token
//! of each of 2..16 sequences in one decode, and the draft model's step; store the curve in
//! the cache, print it. `run`, `batch` and `bench` then plan
//! draft lengths along it.

use crate::cli::CalibrateArgs;
use crate::infer::calibration::{self, Calibration};
use crate::infer::{plan, with_backend};
use crate::io::out;
use crate::settings::{Origin, Overrides, Setting};
use anyhow::{bail, Result};
use specrun_core::draft::DrafterKind;
use specrun_core::model::Token;
use std::fmt::Write as _;
use std::process::ExitCode;

pub fn calibrate(args: &CalibrateArgs) -> Result<ExitCode> {
    // the draft model is measured too when the pair has one
    let flags = Overrides { drafter: Some(Setting::new(DrafterKind::Hybrid, Origin::Flag("calibrate"))), ..Overrides::default() };
    let sel = args.models.selection();
    let plan = match plan(&sel, &flags) {
        Ok(p) => p,
        Err(_) if sel.model_draft.is_none() && sel.model.is_some() => {
            plan(&sel, &Overrides { no_draft: Some(Setting::new(true, Origin::Flag("calibrate"))), ..Overrides::default() })?
        }
        Err(e) => return Err(e),
    };
    let mut plan = plan;
    let key = calibration::key(&plan, args.models.mock);
    if args.show {
        match calibration::load_checked(&key)? {
            Some(c) => out(&render(&c))?,
            None => bail!("no stored calibration for {} with these settings; run `specrun calibrate` first", plan.target.name),
        }
        return Ok(ExitCode::SUCCESS);
    }
    calibration::check_writable()?;
    let n_batch = plan.target.n_batch as usize;
    let sizes: Vec<usize> = if args.sizes.is_empty() { calibration::default_sizes(n_batch) } else { args.sizes.clone() };
    if let Some(&b) = sizes.iter().find(|&&b| b == 0 || b > n_batch) {
        bail!("--sizes: {b} is not in [1, n_batch {n_batch}]");
    }
    let mut sizes = sizes;
    if !sizes.contains(&1) {
        sizes.insert(0, 1);
    }
    if !(1..=100).contains(&args.repeat) {
        bail!("--repeat must be in [1, 100], got {}", args.repeat);
    }
    let seq_counts: Vec<usize> = match args.seqs.as_slice() {
        [] => calibration::default_seq_counts(n_batch),
        [1] => Vec::new(),
        counts => counts.to_vec(),
    };
    let max_seqs = crate::settings::MAX_PARALLEL.min(n_batch);
    if let Some(&s) = seq_counts.iter().find(|&&s| s < 2 || s > max_seqs) {
        bail!("--seqs: {s} is not in [2, {max_seqs}] (or give --seqs 1 to measure one sequence only)");
    }
    // the target holds the sequences measured together; a short context each keeps their
    // cells small (the calibration reads only CONTEXT_DEPTH + 1 positions)
    if let Some(&most) = seq_counts.iter().max() {
        plan.target.n_seq = plan.target.n_seq.max(most as u32);
        plan.target.n_ctx = plan.target.n_ctx.min(1024);
    }
    crate::io::install_interrupt_handler();
    let mut result = None;
    with_backend(&plan, args.models.mock, &mut |target, draft, codec, clock| {
        let context: Vec<Token> = codec.tokenize(&"The quick brown fox jumps over the lazy dog. ".repeat(CONTEXT_DEPTH / 4));
        let context: Vec<Token> = context.into_iter().take(CONTEXT_DEPTH).collect();
        let target_secs = calibration::measure(target, clock, &sizes, args.repeat, &context)?;
        let seq_secs = calibration::measure_seqs(target, clock, &seq_counts, args.repeat, &context)?;
        let draft_step_secs = match draft {
            Some(d) => calibration::measure(d, clock, &[1], args.repeat, &context)?.first().map(|p| p.1),
            None => None,
        };
        result = Some(Calibration { key: key.clone(), target_secs, draft_step_secs, seq_secs });
        Ok(ExitCode::SUCCESS)
    })?;
    let Some(c) = result else { bail!("nothing was measured") };
    if c.curve().is_none() {
        bail!("the measured times are not usable (a clock that does not move?)");
    }
    let path = calibration::store(&c)?;
    out(&render(&c))?;
    crate::io::note(format!("stored in {}", path.display()));
    Ok(ExitCode::SUCCESS)
}

/// Tokens of context every measured decode follows (as llama-batched-bench's `-npp 128`):
/// verification happens after a prompt, and attention over it is part of the cost.
const CONTEXT_DEPTH: usize = 128;

fn render(c: &Calibration) -> String {
    let mut s = format!(
        "target decode cost ({}; {} threads, n_batch {}, {} GPU layers, {})\n",
        c.key.model, c.key.threads, c.key.n_batch, c.key.n_gpu_layers, c.key.backend
    );
    let _ = writeln!(s, "{:>6}  {:>10}  {:>10}  {:>12}", "batch", "ms", "× 1 token", "ms / token");
    let t1 = c.target_secs.first().map_or(1.0, |p| p.1);
    for &(b, t) in &c.target_secs {
        let _ = writeln!(s, "{b:>6}  {:>10.2}  {:>10.2}  {:>12.2}", t * 1e3, t / t1, t * 1e3 / b as f64);
    }
    if !c.seq_secs.is_empty() {
        let _ = writeln!(s, "{:>6}  {:>10}  {:>10}  {:>12}", "seqs", "ms", "× 1 token", "× same rows");
        let curve = c.curve();
        for &(n, t) in &c.seq_secs {
            let same_rows = curve.as_ref().map_or(f64::NAN, |k| k.seq_factor(n));
            let _ = writeln!(s, "{n:>6}  {:>10.2}  {:>10.2}  {same_rows:>12.2}", t * 1e3, t / t1);
        }
    }
    if let Some(d) = c.draft_step_secs {
        let _ = writeln!(s, "draft step {:.2} ms ({:.2} of a 1-token target decode)", d * 1e3, d / t1);
    }
    s
}
