//! `specrun check-pair`: whether a draft model can draft for a target, from their vocabularies
//! alone (fast: no weights are loaded). Exit 0 compatible, 1 incompatible.

use crate::cli::ModelArgs;
use crate::infer::{plan, ModelPlan};
use crate::settings::{Origin, Overrides, Setting};
use anyhow::{anyhow, Result};
use specrun_core::draft::DrafterKind;
use std::process::ExitCode;

pub fn check_pair(models: &ModelArgs) -> Result<ExitCode> {
    let flags = Overrides { drafter: Some(Setting::new(DrafterKind::Model, Origin::Flag("check-pair"))), ..Overrides::default() };
    let plan = plan(&models.selection(), &flags)?;
    let draft = plan.draft.as_ref().ok_or_else(|| anyhow!("check-pair needs a draft model (-md or a pair)"))?;
    check_files(&plan.target, draft)
}

#[cfg(feature = "llama")]
fn check_files(target: &ModelPlan, draft: &ModelPlan) -> Result<ExitCode> {
    use crate::backend::llama::LoadedModel;
    let t = LoadedModel::load_vocab_only(&target.path)?;
    let d = LoadedModel::load_vocab_only(&draft.path)?;
    let (tf, df) = (t.vocab_facts(), d.vocab_facts());
    match specrun_core::vocab::check_compatible(&tf, &df) {
        Ok(()) => {
            crate::io::out(&format!(
                "compatible: draft {} ({} tokens) can draft for target {} ({} tokens), vocabulary {}\n",
                draft.name,
                df.texts.len(),
                target.name,
                tf.texts.len(),
                tf.kind
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            crate::io::note(format!(
                "error: incompatible pair: draft {} cannot draft for target {}: {e}",
                draft.path.display(),
                target.path.display()
            ));
            Ok(ExitCode::from(super::EXIT_NEGATIVE))
        }
    }
}

#[cfg(not(feature = "llama"))]
fn check_files(_: &ModelPlan, _: &ModelPlan) -> Result<ExitCode> {
    anyhow::bail!("this specrun was built without the llama.cpp backend (cargo feature `llama`)")
}
