//! Whether a draft model can serve a target: llama.cpp's compatibility rules on vocabulary facts.
//!
//! Speculation compares token ids, so the two vocabularies must mean the same thing by every id.
//! The rules are llama.cpp's (`common_speculative_are_compatible`): same vocabulary type, same
//! add-BOS/add-EOS flags and BOS/EOS ids, sizes within 128 of each other, and identical token
//! text for every id from 5 up to the smaller size.

use thiserror::Error;

/// Largest allowed difference of vocabulary sizes.
pub const MAX_SIZE_DIFFERENCE: usize = 128;
/// Token texts are compared from this id on (the first ids are often control tokens).
pub const CHECK_START_ID: usize = 5;

/// The facts about one vocabulary the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabFacts {
    pub kind: String,
    pub add_bos: bool,
    pub add_eos: bool,
    pub bos: i32,
    pub eos: i32,
    /// Token text by id.
    pub texts: Vec<Vec<u8>>,
}

/// Two vocabularies are incompatible: the first rule broken and, where the texts differ at
/// all, the first token id whose text differs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{rule}{}", first_token.as_ref().map(|t| format!("; first differing {t}")).unwrap_or_default())]
pub struct Incompatible {
    pub rule: VocabMismatch,
    /// The first differing token (a [`VocabMismatch::Token`]), also when another rule broke first.
    pub first_token: Option<VocabMismatch>,
}

/// Which rule two vocabularies break.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VocabMismatch {
    #[error("vocabulary types differ: target {target}, draft {draft}")]
    Kind { target: String, draft: String },
    #[error("{what} differs: target {target}, draft {draft}")]
    Special { what: &'static str, target: String, draft: String },
    #[error("vocabulary sizes differ by more than {MAX_SIZE_DIFFERENCE}: target {target}, draft {draft}")]
    Size { target: usize, draft: usize },
    #[error("token {id} differs: target {target:?}, draft {draft:?}")]
    Token { id: usize, target: String, draft: String },
}

fn special<T: PartialEq + ToString>(what: &'static str, t: T, d: T) -> Result<(), VocabMismatch> {
    if t == d {
        Ok(())
    } else {
        Err(VocabMismatch::Special { what, target: t.to_string(), draft: d.to_string() })
    }
}

/// The first token id from [`CHECK_START_ID`] whose text differs.
fn first_token_difference(target: &VocabFacts, draft: &VocabFacts) -> Option<VocabMismatch> {
    (CHECK_START_ID..target.texts.len().min(draft.texts.len())).find(|&id| target.texts[id] != draft.texts[id]).map(|id| {
        VocabMismatch::Token {
            id,
            target: String::from_utf8_lossy(&target.texts[id]).into_owned(),
            draft: String::from_utf8_lossy(&draft.texts[id]).into_owned(),
        }
    })
}

fn first_rule_broken(target: &VocabFacts, draft: &VocabFacts) -> Result<(), VocabMismatch> {
    if target.kind != draft.kind {
        return Err(VocabMismatch::Kind { target: target.kind.clone(), draft: draft.kind.clone() });
    }
    special("add-BOS", target.add_bos, draft.add_bos)?;
    special("add-EOS", target.add_eos, draft.add_eos)?;
    special("BOS id", target.bos, draft.bos)?;
    special("EOS id", target.eos, draft.eos)?;
    let (nt, nd) = (target.texts.len(), draft.texts.len());
    if nt.abs_diff(nd) > MAX_SIZE_DIFFERENCE {
        return Err(VocabMismatch::Size { target: nt, draft: nd });
    }
    Ok(())
}

/// Check that `draft` can draft for `target`; the error names the first rule broken and the
/// first differing token.
// The error is large but built once, on a path that ends the command.
#[allow(clippy::result_large_err)]
pub fn check_compatible(target: &VocabFacts, draft: &VocabFacts) -> Result<(), Incompatible> {
    let first_token = first_token_difference(target, draft);
    match first_rule_broken(target, draft) {
        Err(rule) => Err(Incompatible { rule, first_token }),
        Ok(()) => match first_token {
            Some(rule) => Err(Incompatible { rule, first_token: None }),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n: usize) -> VocabFacts {
        VocabFacts {
            kind: "bpe".into(),
            add_bos: false,
            add_eos: false,
            bos: 1,
            eos: 2,
            texts: (0..n).map(|i| format!("t{i}").into_bytes()).collect(),
        }
    }

    #[test]
    fn identical_and_slightly_larger_vocabularies_are_compatible() {
        assert_eq!(check_compatible(&facts(1000), &facts(1000)), Ok(()));
        assert_eq!(check_compatible(&facts(1100), &facts(1000)), Ok(()));
    }

    #[test]
    fn each_rule_reports_its_difference() {
        let mut d = facts(1000);
        d.kind = "spm".into();
        d.texts[42] = b"x".to_vec();
        let e = check_compatible(&facts(1000), &d).unwrap_err();
        assert!(matches!(e.rule, VocabMismatch::Kind { .. }));
        assert_eq!(
            e.to_string(),
            "vocabulary types differ: target bpe, draft spm; first differing token 42 differs: target \"t42\", draft \"x\""
        );
        let mut d = facts(1000);
        d.eos = 3;
        assert_eq!(
            check_compatible(&facts(1000), &d).unwrap_err().rule,
            VocabMismatch::Special { what: "EOS id", target: "2".into(), draft: "3".into() }
        );
        assert!(matches!(check_compatible(&facts(1200), &facts(1000)).unwrap_err().rule, VocabMismatch::Size { .. }));
        let mut d = facts(1000);
        d.texts[700] = b"other".to_vec();
        d.texts[900] = b"later".to_vec();
        d.texts[3] = b"ignored below id 5".to_vec();
        assert_eq!(
            check_compatible(&facts(1000), &d).unwrap_err().rule,
            VocabMismatch::Token { id: 700, target: "t700".into(), draft: "other".into() }
        );
    }
}
