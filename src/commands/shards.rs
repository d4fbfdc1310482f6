//! `specrun shards IN OUT...`: check that the outputs of `batch --shard I/N` runs cover every
//! record of IN exactly once — each output made from this very input (its header's sha256),
//! every id present once, none unknown. Exit 0 when complete, 1 with what is missing or doubled.

use super::batch::{input_format, MAX_INPUT_BYTES, MAX_OUTPUT_BYTES};
use crate::cli::ShardsArgs;
use crate::formats::records::{id_key, parse_input, read_output, Record};
use crate::io::{out, read_text};
use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::process::ExitCode;

fn id_of(r: &Record) -> serde_json::Value {
    match r {
        Ok(j) => j.id.clone(),
        Err(b) => b.id.clone(),
    }
}

pub fn shards(args: &ShardsArgs) -> Result<ExitCode> {
    let text = read_text(&args.input, MAX_INPUT_BYTES)?;
    let sha = format!("{:x}", Sha256::digest(text.as_bytes()));
    let records = parse_input(&text, input_format(&args.input, args.input_format, &text));
    let mut count: HashMap<String, usize> = records.iter().map(|r| (id_key(&id_of(r)), 0)).collect();
    let mut unknown = Vec::new();
    // the shards must have been made alike: the settings that change results, by output
    let mut settings: Option<(&std::path::Path, crate::formats::records::Header)> = None;
    let mut mixed = None;
    let mut failed = 0usize;
    for o in &args.outputs {
        let t = read_text(o, MAX_OUTPUT_BYTES)?;
        let state = read_output(o, &t).map_err(|e| anyhow!("{}: {e}", o.display()))?;
        let Some(header) = state.header else { bail!("{}: empty, or its header was cut off", o.display()) };
        if header.specrun_batch.input_sha256 != sha {
            bail!("{} was made from another input than {} (sha256 differs)", o.display(), args.input.display());
        }
        if state.valid_len < t.len() {
            bail!("{}: its last record was cut off; finish it with `batch --resume`", o.display());
        }
        // each shard names its own share; everything else must agree
        let mut header = header;
        header.specrun_batch.settings.remove("shard");
        match &settings {
            None => settings = Some((o, header)),
            Some((first, h)) => {
                if let Some(why) = h.mismatch(&header) {
                    mixed.get_or_insert(format!("{} and {} were made with different settings: {why}", first.display(), o.display()));
                }
            }
        }
        failed += state.n_failed;
        for id in state.done {
            match count.get_mut(&id) {
                Some(n) => *n += 1,
                None => unknown.push(format!("{id} (in {})", o.display())),
            }
        }
    }
    let missing: Vec<&String> = records
        .iter()
        .map(|r| id_key(&id_of(r)))
        .filter_map(|k| count.get_key_value(&k).filter(|(_, n)| **n == 0).map(|(k, _)| k))
        .collect();
    let doubled: Vec<String> = count.iter().filter(|(_, n)| **n > 1).map(|(k, n)| format!("{k} ({n} times)")).collect();
    if let Some(why) = mixed {
        out(&format!("{why}\n"))?;
        return Ok(ExitCode::from(super::EXIT_NEGATIVE));
    }
    if missing.is_empty() && doubled.is_empty() && unknown.is_empty() {
        let failures = if failed > 0 { format!(" ({failed} of them error records)") } else { String::new() };
        out(&format!("complete: {} records in {} outputs, each exactly once{failures}\n", records.len(), args.outputs.len()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: Vec<String>| if v.len() > 10 { format!("{} … ({} in all)", v[..10].join(", "), v.len()) } else { v.join(", ") };
    let mut report = String::new();
    if !missing.is_empty() {
        report += &format!("missing: {}\n", show(missing.into_iter().cloned().collect()));
    }
    if !doubled.is_empty() {
        report += &format!("more than once: {}\n", show(doubled));
    }
    if !unknown.is_empty() {
        report += &format!("not in the input: {}\n", show(unknown));
    }
    out(&report)?;
    Ok(ExitCode::from(super::EXIT_NEGATIVE))
}
