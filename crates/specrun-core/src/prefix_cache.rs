//! A host-memory prefix cache: what finished sequences left in the target's and the draft
//! model's caches, copied out as snapshots and keyed by their tokens, so that a later prompt
//! that begins the same way — in any slot — restores the longest cached prefix instead of
//! reading it again (llama-server's `--cache-ram`, vLLM's automatic prefix caching).
//!
//! The cache decides what to keep (least recently used entries leave first, by bytes, within a
//! budget; an entry another one extends is dropped) and what to restore (the entry sharing the
//! longest prefix with the prompt, when it beats what the slot already holds). The models copy
//! the cells ([`Model::snapshot`], [`Model::restore`]); a restore that fails leaves the slot
//! empty, and the prompt is read as if nothing were cached.

use crate::draft::Drafter;
use crate::engine::{Engine, KeptCells};
use crate::model::{Model, SeqId, Snapshot, Token};

/// Counters of a [`PrefixCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Entries stored, and entries evicted to stay within the budget.
    pub n_saved: usize,
    pub n_evicted: usize,
    /// Restores into a slot, and the prompt tokens they gave (target cells).
    pub n_restores: usize,
    pub n_restored_tokens: usize,
    /// Restores the model refused (the prompt was read instead).
    pub n_failed: usize,
}

struct Entry {
    cells: KeptCells,
    target: Snapshot,
    draft: Option<Snapshot>,
    last_use: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.target.bytes() + self.draft.as_ref().map_or(0, Snapshot::bytes)
    }
}

/// Finished sequences' cells in host memory, at most `budget` bytes (0: off).
pub struct PrefixCache {
    budget: usize,
    used: usize,
    tick: u64,
    entries: Vec<Entry>,
    pub stats: PrefixCacheStats,
}

impl PrefixCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget: budget_bytes, used: 0, tick: 0, entries: Vec::new(), stats: PrefixCacheStats::default() }
    }

    pub fn is_enabled(&self) -> bool {
        self.budget > 0
    }

    /// Bytes the entries hold (never above the budget).
    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keep `cells`, what a finished sequence left in slot `seq` of both models. Nothing is
    /// copied when an entry already holds them, or when they alone exceed the budget.
    pub fn save<T: Model, D: Drafter>(&mut self, engine: &mut Engine<T, D>, seq: SeqId, cells: &KeptCells) {
        if !self.is_enabled() || cells.n_target() == 0 {
            return;
        }
        self.tick += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| covers(&e.cells, cells)) {
            e.last_use = self.tick;
            return;
        }
        let Some(target) = engine.target.snapshot(seq) else { return };
        let draft = if cells.n_draft() > 0 { engine.drafter.snapshot(seq) } else { None };
        let (n_target, n_draft) = (cells.n_target(), if draft.is_some() { cells.n_draft() } else { 0 });
        let entry = Entry { cells: KeptCells::new(cells.tokens().to_vec(), n_target, n_draft), target, draft, last_use: self.tick };
        let size = entry.bytes();
        if size > self.budget {
            return;
        }
        // entries the new one extends are of no more use
        let (gone, kept): (Vec<Entry>, Vec<Entry>) =
            std::mem::take(&mut self.entries).into_iter().partition(|e| covers(&entry.cells, &e.cells));
        self.entries = kept;
        self.used -= gone.iter().map(Entry::bytes).sum::<usize>();
        while self.used + size > self.budget {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_use).map(|(i, _)| i) else { break };
            self.used -= self.entries.swap_remove(oldest).bytes();
            self.stats.n_evicted += 1;
        }
        self.used += size;
        self.entries.push(entry);
        self.stats.n_saved += 1;
    }

    /// How many leading tokens of `head` the best entry's target cells hold (nothing restored).
    pub fn longest(&self, head: &[Token]) -> usize {
        self.entries.iter().map(|e| e.cells.reusable(head).0).max().unwrap_or(0)
    }

    /// What slot `seq` should start from for a prompt whose tokens before the last are `head`:
    /// `kept` (what the slot holds), or the cached entry sharing a longer prefix with `head`,
    /// restored into the slot in both models. A failed restore gives an empty slot.
    pub fn restore<T: Model, D: Drafter>(&mut self, engine: &mut Engine<T, D>, seq: SeqId, head: &[Token], kept: KeptCells) -> KeptCells {
        let here = kept.reusable(head).0;
        let best =
            self.entries.iter().enumerate().map(|(i, e)| (i, e.cells.reusable(head).0)).max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)));
        let Some((i, n)) = best.filter(|&(_, n)| n > here) else { return kept };
        self.tick += 1;
        let entry = &mut self.entries[i];
        entry.last_use = self.tick;
        if engine.target.restore(seq, &entry.target).is_err() {
            self.stats.n_failed += 1;
            return KeptCells::default();
        }
        let n_draft = match &entry.draft {
            Some(d) if engine.drafter.restore(seq, d).is_ok() => entry.cells.n_draft(),
            _ => 0,
        };
        self.stats.n_restores += 1;
        self.stats.n_restored_tokens += n;
        KeptCells::new(entry.cells.tokens().to_vec(), entry.cells.n_target(), n_draft)
    }
}

/// Whether `a` holds everything `b` does: `b`'s tokens begin `a`'s, in both models.
fn covers(a: &KeptCells, b: &KeptCells) -> bool {
    a.tokens().starts_with(b.tokens()) && a.n_target() >= b.n_target() && a.n_draft() >= b.n_draft()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draft::NoDraft;
    use crate::engine::GenConfig;
    use crate::mock::{MockClock, MockModel, MockSpec, MOCK_CELL_BYTES};

    fn engine() -> Engine<MockModel, NoDraft> {
        let spec = MockSpec { n_seq: 4, ..MockSpec::target(7) };
        Engine::new(MockModel::new(spec), NoDraft, GenConfig { max_tokens: 4, ..GenConfig::default() })
    }

    /// Generate `prompt` to the end in slot `id`; what the sequence leaves there.
    fn finished<M: Model>(e: &mut Engine<M, NoDraft>, id: SeqId, prompt: Vec<Token>) -> KeptCells {
        let clock = MockClock::new();
        let mut seq = e.start(id, prompt, &clock).unwrap();
        e.generate(&mut seq, &clock, |_| {}).unwrap();
        seq.kept_cells()
    }

    #[test]
    fn a_prompt_restores_the_longest_shared_prefix_into_another_slot() {
        let mut e = engine();
        let mut cache = PrefixCache::new(1 << 30);
        let shared: Vec<Token> = (10..60).collect();
        let first = finished(&mut e, 0, [shared.clone(), vec![1, 2, 3]].concat());
        cache.save(&mut e, 0, &first);
        let prompt = [shared.clone(), vec![7, 8, 9]].concat();
        let cells = cache.restore(&mut e, 2, &prompt[..prompt.len() - 1], KeptCells::default());
        assert_eq!(cells.reusable(&prompt[..prompt.len() - 1]).0, shared.len());
        assert_eq!(e.target.n_restores, 1);
        assert_eq!(cache.stats.n_restored_tokens, shared.len());
        // the restored slot continues exactly as a fresh read would
        let clock = MockClock::new();
        let seq = e.start_after(2, prompt.clone(), e.config.clone(), Some(&cells), &clock).unwrap();
        assert_eq!(seq.stats.n_prompt_cached, shared.len());
        let mut fresh = engine();
        let plain = fresh.start(0, prompt, &clock).unwrap();
        assert_eq!(seq.tokens, plain.tokens);
    }

    /// Engines usually hold `&mut` models (the binary's `&mut dyn Model`): snapshots pass through.
    #[test]
    fn snapshots_pass_through_a_borrowed_model() {
        let mut model = MockModel::new(MockSpec { n_seq: 2, ..MockSpec::target(7) });
        let mut e = Engine::new(&mut model as &mut dyn Model, NoDraft, GenConfig { max_tokens: 4, ..GenConfig::default() });
        let prompt: Vec<Token> = (10..40).collect();
        let kept = finished(&mut e, 0, prompt.clone());
        let mut cache = PrefixCache::new(1 << 30);
        cache.save(&mut e, 0, &kept);
        assert_eq!(cache.len(), 1);
        let cells = cache.restore(&mut e, 1, &prompt[..prompt.len() - 1], KeptCells::default());
        assert_eq!(cells.reusable(&prompt[..prompt.len() - 1]).0, prompt.len() - 1);
        drop(e);
        assert_eq!(model.n_restores, 1);
    }

    #[test]
    fn what_the_slot_holds_wins_when_it_shares_as_much() {
        let mut e = engine();
        let mut cache = PrefixCache::new(1 << 30);
        let prompt: Vec<Token> = (10..40).collect();
        let kept = finished(&mut e, 0, prompt.clone());
        cache.save(&mut e, 0, &kept);
        let cells = cache.restore(&mut e, 0, &prompt[..prompt.len() - 1], kept.clone());
        assert_eq!(cells, kept);
        assert_eq!(e.target.n_restores, 0);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_and_never_grows() {
        let mut e = engine();
        // room for two 30-token sequences (34 cells each after 4 generated tokens)
        let mut cache = PrefixCache::new(70 * MOCK_CELL_BYTES);
        let prompts: Vec<Vec<Token>> = (0..4).map(|k| (0..30).map(|j| ((j * 7 + k * 13) % 55 + 5) as Token).collect()).collect();
        for (i, p) in prompts.iter().enumerate() {
            let cells = finished(&mut e, (i % 4) as SeqId, p.clone());
            cache.save(&mut e, (i % 4) as SeqId, &cells);
            assert!(cache.bytes() <= 70 * MOCK_CELL_BYTES);
        }
        assert!(cache.len() <= 2, "{} entries", cache.len());
        assert!(cache.stats.n_evicted >= 2, "{:?}", cache.stats);
        // the two latest stay, the first went
        let head = |p: &Vec<Token>| p[..p.len() - 1].to_vec();
        assert_eq!(cache.restore(&mut e, 1, &head(&prompts[0]), KeptCells::default()), KeptCells::default());
        assert!(cache.restore(&mut e, 1, &head(&prompts[3]), KeptCells::default()).n_target() > 0);
    }

    #[test]
    fn an_entry_that_alone_exceeds_the_budget_is_not_kept() {
        let mut e = engine();
        let mut cache = PrefixCache::new(8 * MOCK_CELL_BYTES);
        let cells = finished(&mut e, 0, (10..40).collect());
        cache.save(&mut e, 0, &cells);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn an_extended_entry_replaces_the_one_it_extends() {
        let mut e = engine();
        let mut cache = PrefixCache::new(1 << 30);
        let short: Vec<Token> = (10..30).collect();
        let cells = finished(&mut e, 0, short.clone());
        cache.save(&mut e, 0, &cells);
        let long = cells.tokens().iter().copied().chain(40..60).collect::<Vec<_>>();
        let cells = finished(&mut e, 1, long);
        cache.save(&mut e, 1, &cells);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), cells.n_target() * MOCK_CELL_BYTES);
    }

    #[test]
    fn a_failed_restore_leaves_an_empty_slot() {
        struct Refuses(MockModel);
        impl Model for Refuses {
            fn n_vocab(&self) -> usize {
                self.0.n_vocab()
            }
            fn n_ctx(&self) -> usize {
                self.0.n_ctx()
            }
            fn n_batch(&self) -> usize {
                self.0.n_batch()
            }
            fn is_eog(&self, t: Token) -> bool {
                self.0.is_eog(t)
            }
            fn decode(&mut self, s: SeqId, p: usize, t: &[Token], f: usize) -> Result<(), crate::model::ModelError> {
                self.0.decode(s, p, t, f)
            }
            fn logits(&self, r: usize) -> &[f32] {
                self.0.logits(r)
            }
            fn truncate(&mut self, s: SeqId, l: usize) -> Result<(), crate::model::ModelError> {
                self.0.truncate(s, l)
            }
            fn n_seq_max(&self) -> usize {
                self.0.n_seq_max()
            }
            fn snapshot(&mut self, s: SeqId) -> Option<Snapshot> {
                self.0.snapshot(s)
            }
        }
        let spec = MockSpec { n_seq: 4, ..MockSpec::target(7) };
        let mut e = Engine::new(Refuses(MockModel::new(spec)), NoDraft, GenConfig { max_tokens: 4, ..GenConfig::default() });
        let prompt: Vec<Token> = (10..40).collect();
        let kept = finished(&mut e, 0, prompt.clone());
        let mut cache = PrefixCache::new(1 << 30);
        cache.save(&mut e, 0, &kept);
        let cells = cache.restore(&mut e, 1, &prompt[..prompt.len() - 1], KeptCells::default());
        assert!(cells.is_empty());
        assert_eq!(cache.stats.n_failed, 1);
        let again = e.start_after(1, prompt.clone(), e.config.clone(), None, &MockClock::new()).unwrap();
        assert_eq!(again.stats.n_prompt_cached, 0);
    }
}
