//! One prompt being generated ([`Sequence`]) and what a finished one leaves in its slot's
//! caches ([`KeptCells`]).

use super::*;

/// What a finished sequence left in its slot's caches ([`Sequence::kept_cells`]): the tokens
/// whose cells the target and the draft model still hold for that sequence id. The next
/// prompt read in the slot keeps the cells it shares with them ([`Engine::admit_after`]), as
/// llama.cpp's server reuses a slot's prompt cache: a chat's next turn, or requests with one
/// system prompt, read only what is new.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptCells {
    tokens: Vec<Token>,
    n_target: usize,
    n_draft: usize,
}

impl KeptCells {
    /// Cells holding `tokens[..n_target]` in the target and `tokens[..n_draft]` in the draft model.
    pub(crate) fn new(tokens: Vec<Token>, n_target: usize, n_draft: usize) -> Self {
        Self { tokens, n_target, n_draft }
    }

    /// The tokens the cells hold (the longer of the two models' runs).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Tokens the target's cells hold.
    pub fn n_target(&self) -> usize {
        self.n_target
    }

    /// Tokens the draft model's cells hold.
    pub fn n_draft(&self) -> usize {
        self.n_draft
    }

    /// Nothing kept (a cleared slot).
    pub fn is_empty(&self) -> bool {
        self.n_target == 0 && self.n_draft == 0
    }

    /// Tokens kept in either cache.
    pub fn len(&self) -> usize {
        self.n_target.max(self.n_draft)
    }

    /// How many leading tokens of `head` the target's and the draft model's kept cells hold.
    pub fn reusable(&self, head: &[Token]) -> (usize, usize) {
        let common = self.tokens.iter().zip(head).take_while(|(a, b)| a == b).count();
        (common.min(self.n_target), common.min(self.n_draft))
    }
}

/// One prompt being generated.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
    /// This sequence's settings (the engine's at [`Engine::start`]): several sequences with
    /// different settings can share one engine and one target decode.
    pub config: GenConfig,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<Token>,
    pub n_prompt: usize,
    pub target: KvCursor,
    pub draft: DraftCursor,
    pub rng: ChaCha8Rng,
    pub stats: GenStats,
    pub finish: Option<FinishReason>,
    /// Chooses each round's draft length.
    pub controller: Controller,
    /// Keep each round's [`RoundRecord`] in `last_round` (a trace; off by default).
    pub trace_rounds: bool,
    pub last_round: Option<RoundRecord>,
    pub(super) q: Vec<Dist>,
    /// When [`Engine::admit`] took the sequence in (its prompt time runs from here).
    pub(super) t_admitted: Duration,
    /// Its shared rounds' planned paces (whether or not the round drafted), on the whole: what
    /// a job like it may give ([`crate::outlook`]).
    pub pace_mean: PaceMean,
    /// The grammar its output follows, in step with its tokens.
    pub guide: Option<Guide>,
    /// Why its grammar failed it in a shared round (a lexer limit, say): the sequence is
    /// finished, and [`crate::batching`] hands the error to its sink, not to the other
    /// sequences of the round.
    pub failed: Option<ConstraintError>,
    /// Tokens the constraint forced at the end of `tokens` this round (drafted, not verified).
    pub(super) forced: usize,
    /// Of those, how many are only the likely spelling of forced text ([`Constraint::likely`]),
    /// or an ending and the end after it ([`crate::closing::Endings`]), at their end.
    pub(super) likely: usize,
    /// The mask fingerprint of the state where this round drafted an ending, if it did.
    pub(super) ending: Option<u64>,
    /// Of the round's cap on forced tokens, what the forced span left: a closing draft may
    /// use it for the forced span after its closer (in shared rounds the cap is the
    /// sequence's share of `n_batch`).
    pub(super) spare: usize,
    /// With [`GenConfig::logprobs`]: one entry per generated token, in order.
    pub logprobs: Vec<TokenLogprob>,
    /// The tokens the target wrote where a copied value ended ([`crate::closing`]): what the
    /// engine's earlier sequences learned, then its own.
    pub(super) closers: Closers,
}

impl Sequence {
    pub fn generated(&self) -> &[Token] {
        &self.tokens[self.n_prompt..]
    }

    /// Whether the target is still reading the prompt (admitted by [`Engine::admit`], no token
    /// generated yet).
    pub fn reading_prompt(&self) -> bool {
        self.finish.is_none() && self.tokens.len() == self.n_prompt
    }

    /// What this sequence leaves in its slot's caches when it ends (see [`KeptCells`]).
    pub fn kept_cells(&self) -> KeptCells {
        let (n_target, n_draft) = (self.target.n_cached, self.draft.n_cached);
        KeptCells { tokens: self.tokens[..n_target.max(n_draft).min(self.tokens.len())].to_vec(), n_target, n_draft }
    }

    /// Prompt tokens the target has not read yet.
    pub fn prompt_left(&self) -> usize {
        if self.reading_prompt() {
            self.n_prompt - self.target.n_cached
        } else {
            0
        }
    }
}
