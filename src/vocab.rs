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

/// Why two vocabularies are incompatible.
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

/// Check that `draft` can draft for `target`; the error names the first difference.
pub fn check_compatible(target: &VocabFacts, draft: &VocabFacts) -> Result<(), VocabMismatch> {
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
    for id in CHECK_START_ID..nt.min(nd) {
        if target.texts[id] != draft.texts[id] {
            return Err(VocabMismatch::Token {
                id,
                target: String::from_utf8_lossy(&target.texts[id]).into_owned(),
                draft: String::from_utf8_lossy(&draft.texts[id]).into_owned(),
            });
        }
    }
    Ok(())
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
        assert!(matches!(check_compatible(&facts(1000), &d), Err(VocabMismatch::Kind { .. })));
        let mut d = facts(1000);
        d.eos = 3;
        assert_eq!(
            check_compatible(&facts(1000), &d),
            Err(VocabMismatch::Special { what: "EOS id", target: "2".into(), draft: "3".into() })
        );
        assert!(matches!(check_compatible(&facts(1200), &facts(1000)), Err(VocabMismatch::Size { .. })));
        let mut d = facts(1000);
        d.texts[700] = b"other".to_vec();
        d.texts[900] = b"later".to_vec();
        d.texts[3] = b"ignored below id 5".to_vec();
        assert_eq!(
            check_compatible(&facts(1000), &d),
            Err(VocabMismatch::Token { id: 700, target: "t700".into(), draft: "other".into() })
        );
    }
}
