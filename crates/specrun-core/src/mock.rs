//! A deterministic in-memory [`Model`] for tests, benches and the hidden `--mock` backend.
//!
//! Logits are a pure function of the whole token prefix (through a running hash), so a model
//! that forgot to roll back, or decoded at the wrong position, gives different output — and
//! [`MockModel::decode`] refuses any position that does not continue its cache. A mock draft is
//! derived from a mock target's logits and agrees with its argmax at a chosen rate.
//!
//! Decoding advances an optional [`MockClock`] by a scripted cost, so timing-dependent logic is
//! testable without a real clock.

use crate::clock::Clock;
use crate::model::{DecodePart, Model, ModelError, SeqId, Token};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a mock model's logits relate to the context.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// The reference model. `eog_rate`: chance that a context makes EOG the argmax.
    Target { seed: u64, eog_rate: f64 },
    /// A draft of the target with `target_seed`: at each context it agrees with the target's
    /// argmax with probability `agree` (decided by hash, so reproducibly), otherwise it prefers
    /// something else. `noise` perturbs all other logits.
    Draft { target_seed: u64, target_eog_rate: f64, agree: f64, noise: f32, salt: u64 },
    /// A draft that proposes EOG at a rate `eog_rate` and otherwise agrees with the target.
    DraftEogEarly { target_seed: u64, target_eog_rate: f64, eog_rate: f64 },
    /// A draft whose logits are the target's negated: under top-k its support is disjoint.
    Anti { target_seed: u64, target_eog_rate: f64 },
}

/// Shape and behaviour of a mock model.
#[derive(Debug, Clone, PartialEq)]
pub struct MockSpec {
    pub n_vocab: usize,
    pub n_ctx: usize,
    pub n_batch: usize,
    /// The end-of-generation token (negative: the model never ends).
    pub eog: Token,
    /// Spread of the logits (larger: more peaked distributions).
    pub scale: f32,
    pub behaviour: Behaviour,
    /// Simulated cost of one decode call, and of each token in it.
    pub cost_per_call: Duration,
    pub cost_per_token: Duration,
    /// When not empty, the seconds of a decode by its tokens instead: straight lines between
    /// these points (tokens ascending; beyond the last, its last segment's slope goes on), for
    /// curves with steps, like a CPU's faster kernel path for larger batches.
    pub cost_curve: Vec<(usize, f64)>,
    /// Refuse to remove part of a sequence, as recurrent memory does.
    pub refuse_partial_removal: bool,
    /// Refuse to share cells between sequences ([`Model::copy_cells`]), as specrun's llama.cpp
    /// backend does for recurrent memory.
    pub refuse_copies: bool,
    /// Sequences the context holds (ids `0..n_seq`), each with `n_ctx` positions.
    pub n_seq: usize,
}

impl MockSpec {
    pub fn target(seed: u64) -> Self {
        Self {
            n_vocab: 64,
            n_ctx: 4096,
            n_batch: 512,
            eog: 0,
            scale: 6.0,
            behaviour: Behaviour::Target { seed, eog_rate: 0.01 },
            cost_per_call: Duration::from_millis(20),
            cost_per_token: Duration::from_millis(2),
            cost_curve: Vec::new(),
            refuse_partial_removal: false,
            refuse_copies: false,
            n_seq: 64,
        }
    }

    /// A draft of `target` agreeing with its argmax with probability `agree`.
    pub fn draft_of(target: &MockSpec, agree: f64, salt: u64) -> Self {
        let (target_seed, target_eog_rate) = target.target_params();
        Self {
            behaviour: Behaviour::Draft { target_seed, target_eog_rate, agree, noise: 1.0, salt },
            cost_per_call: Duration::from_millis(8),
            cost_per_token: Duration::from_millis(1),
            ..target.clone()
        }
    }

    pub fn with_behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// What a decode of `n_tokens` costs ([`MockSpec::cost_curve`], else per call and token).
    pub fn decode_cost(&self, n_tokens: usize) -> Duration {
        match crate::control::interpolate(&self.cost_curve, n_tokens) {
            Some(secs) => Duration::from_secs_f64(secs.max(0.0)),
            None => self.cost_per_call + self.cost_per_token * n_tokens as u32,
        }
    }

    /// The target seed and EOG rate this spec is (or is derived from).
    pub fn target_params(&self) -> (u64, f64) {
        match self.behaviour {
            Behaviour::Target { seed, eog_rate } => (seed, eog_rate),
            Behaviour::Draft { target_seed, target_eog_rate, .. }
            | Behaviour::DraftEogEarly { target_seed, target_eog_rate, .. }
            | Behaviour::Anti { target_seed, target_eog_rate } => (target_seed, target_eog_rate),
        }
    }
}

/// A clock that only moves when a mock model decodes (or a test advances it).
#[derive(Debug, Clone, Default)]
pub struct MockClock(Arc<AtomicU64>);

impl MockClock {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for MockClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Default, Clone)]
struct SeqCache {
    tokens: Vec<Token>,
    /// `hashes[i]`: hash of the first `i` tokens (`hashes[0]` is the empty context).
    hashes: Vec<u64>,
}

/// The mock model. See the module docs.
#[derive(Debug)]
pub struct MockModel {
    pub spec: MockSpec,
    caches: HashMap<SeqId, SeqCache>,
    rows: Vec<Vec<f32>>,
    clock: Option<MockClock>,
    /// Decode calls so far.
    pub n_decode_calls: usize,
    /// Largest batch seen.
    pub max_batch_seen: usize,
    /// Rows left unread ([`DecodePart::unread`]) so far.
    pub n_unread: usize,
    /// Every decode call: `(seq, pos, n_tokens)` of each part, in order.
    pub decode_log: Vec<Vec<(SeqId, usize, usize)>>,
    /// Snapshots put back ([`Model::restore`]).
    pub n_restores: usize,
    /// Cells shared from one sequence to another ([`Model::copy_cells`]), in tokens.
    pub n_copied: usize,
}

/// Host memory a mock snapshot counts per cell (a round number for budget tests).
pub const MOCK_CELL_BYTES: usize = 1024;

const EMPTY_HASH: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(h: u64, x: u64) -> u64 {
    // splitmix64 over the combination
    let mut z = h ^ x.wrapping_mul(0xBF58_476D_1CE4_E5B9).wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

impl MockModel {
    pub fn new(spec: MockSpec) -> Self {
        Self {
            spec,
            caches: HashMap::new(),
            rows: Vec::new(),
            clock: None,
            n_decode_calls: 0,
            max_batch_seen: 0,
            n_unread: 0,
            decode_log: Vec::new(),
            n_restores: 0,
            n_copied: 0,
        }
    }

    pub fn with_clock(mut self, clock: MockClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The tokens sequence `seq`'s cache holds.
    pub fn cached(&self, seq: SeqId) -> &[Token] {
        self.caches.get(&seq).map_or(&[], |c| &c.tokens)
    }

    /// The target's logits for a context hash (shared by the target and its drafts).
    fn target_row(&self, seed: u64, eog_rate: f64, h: u64) -> Vec<f32> {
        let hs = mix(h, seed);
        let mut row: Vec<f32> = (0..self.spec.n_vocab).map(|j| self.spec.scale * unit(mix(hs, j as u64 + 1)) as f32).collect();
        if let Ok(eog) = usize::try_from(self.spec.eog) {
            row[eog] = if unit(mix(hs, 0xE0E0)) < eog_rate { self.spec.scale + 1.0 } else { -self.spec.scale };
        }
        row
    }

    fn row_for(&self, h: u64) -> Vec<f32> {
        match self.spec.behaviour {
            Behaviour::Target { seed, eog_rate } => self.target_row(seed, eog_rate, h),
            Behaviour::Draft { target_seed, target_eog_rate, agree, noise, salt } => {
                let mut row = self.target_row(target_seed, target_eog_rate, h);
                let best = argmax(&row);
                let hn = mix(h, salt ^ 0x5EED);
                for (j, v) in row.iter_mut().enumerate() {
                    *v += noise * (unit(mix(hn, j as u64)) as f32 - 0.5);
                }
                let (lo, hi) = row.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                row[best] = if unit(mix(hn, 0xA6EE)) < agree { hi + 1.0 } else { lo - 1.0 };
                row
            }
            Behaviour::DraftEogEarly { target_seed, target_eog_rate, eog_rate } => {
                let mut row = self.target_row(target_seed, target_eog_rate, h);
                if let (Ok(eog), true) = (usize::try_from(self.spec.eog), unit(mix(h, 0xE0E1)) < eog_rate) {
                    row[eog] = 100.0;
                }
                row
            }
            Behaviour::Anti { target_seed, target_eog_rate } => {
                self.target_row(target_seed, target_eog_rate, h).into_iter().map(|v| -v).collect()
            }
        }
    }
}

impl Model for MockModel {
    fn n_vocab(&self) -> usize {
        self.spec.n_vocab
    }
    fn n_ctx(&self) -> usize {
        self.spec.n_ctx
    }
    fn n_batch(&self) -> usize {
        self.spec.n_batch
    }
    fn is_eog(&self, token: Token) -> bool {
        token == self.spec.eog
    }

    fn decode(&mut self, seq: SeqId, pos: usize, tokens: &[Token], logits_from: usize) -> Result<(), ModelError> {
        self.decode_parts(&[DecodePart { seq, pos, tokens, logits_from, unread: &[] }])
    }

    fn n_seq_max(&self) -> usize {
        self.spec.n_seq
    }

    /// Checks like llama.cpp's: the batch fits `n_batch`, every sequence id is below `n_seq`
    /// and appears once, every part continues its own sequence's cache exactly and fits its
    /// context. Nothing is decoded when any check fails.
    fn decode_parts(&mut self, parts: &[DecodePart<'_>]) -> Result<(), ModelError> {
        let n_tokens: usize = parts.iter().map(|p| p.tokens.len()).sum();
        if n_tokens > self.spec.n_batch {
            return Err(ModelError::BatchTooLarge { n_tokens, n_batch: self.spec.n_batch });
        }
        for (i, p) in parts.iter().enumerate() {
            if p.seq < 0 || p.seq as usize >= self.spec.n_seq.max(1) {
                return Err(ModelError::Decode(format!("sequence id {} is outside 0..{}", p.seq, self.spec.n_seq)));
            }
            if parts[..i].iter().any(|q| q.seq == p.seq) {
                return Err(ModelError::Decode(format!("sequence {} appears twice in one decode", p.seq)));
            }
            if p.pos + p.tokens.len() > self.spec.n_ctx {
                return Err(ModelError::ContextFull { end: p.pos + p.tokens.len(), n_ctx: self.spec.n_ctx });
            }
            if let Some(&t) = p.tokens.iter().find(|&&t| t < 0 || t as usize >= self.spec.n_vocab) {
                return Err(ModelError::Decode(format!("token {t} is outside the vocabulary")));
            }
            let n_cached = self.caches.get(&p.seq).map_or(0, |c| c.tokens.len());
            if p.pos != n_cached {
                return Err(ModelError::PositionMismatch { seq: p.seq, pos: p.pos, n_cached });
            }
        }
        let mut rows = Vec::new();
        for p in parts {
            let cache = self.caches.entry(p.seq).or_insert_with(|| SeqCache { tokens: vec![], hashes: vec![EMPTY_HASH] });
            for &t in p.tokens {
                let h = mix(*cache.hashes.last().unwrap(), t as u64);
                cache.tokens.push(t);
                cache.hashes.push(h);
            }
            let hashes = &cache.hashes[p.pos + 1 + p.logits_from..];
            rows.extend(hashes.iter().enumerate().map(|(r, &h)| p.reads(r).then_some(h)));
        }
        // an unread row has no logits: reading it fails loudly
        self.rows = rows.into_iter().map(|h| h.map_or_else(Vec::new, |h| self.row_for(h))).collect();
        self.n_unread += parts.iter().map(|p| (0..p.tokens.len() - p.logits_from).filter(|&r| !p.reads(r)).count()).sum::<usize>();
        self.n_decode_calls += 1;
        self.max_batch_seen = self.max_batch_seen.max(n_tokens);
        self.decode_log.push(parts.iter().map(|p| (p.seq, p.pos, p.tokens.len())).collect());
        if let Some(clock) = &self.clock {
            clock.advance(self.spec.decode_cost(n_tokens));
        }
        Ok(())
    }

    fn logits(&self, row: usize) -> &[f32] {
        assert!(!self.rows[row].is_empty(), "logits row {row} was left unread");
        &self.rows[row]
    }

    fn snapshot(&mut self, seq: SeqId) -> Option<crate::model::Snapshot> {
        let cache = self.caches.get(&seq).cloned().unwrap_or_default();
        let bytes = cache.tokens.len() * MOCK_CELL_BYTES;
        Some(crate::model::Snapshot::new(cache, bytes))
    }

    fn restore(&mut self, seq: SeqId, snapshot: &crate::model::Snapshot) -> Result<(), ModelError> {
        let cache = snapshot.data::<SeqCache>().ok_or_else(|| ModelError::Restore("not a mock snapshot".into()))?;
        if cache.tokens.len() > self.spec.n_ctx {
            return Err(ModelError::Restore("snapshot longer than the context".into()));
        }
        self.caches.insert(seq, cache.clone());
        self.n_restores += 1;
        Ok(())
    }

    fn copy_cells(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ModelError> {
        if self.spec.refuse_copies {
            self.caches.remove(&to);
            return Err(ModelError::Restore("this mock shares no cells".into()));
        }
        let mut cache = self.caches.get(&from).cloned().unwrap_or_default();
        if cache.tokens.len() < len {
            return Err(ModelError::Restore(format!("sequence {from} holds {} cells, not {len}", cache.tokens.len())));
        }
        cache.tokens.truncate(len);
        cache.hashes.truncate(len + 1);
        self.caches.insert(to, cache);
        self.n_copied += len;
        Ok(())
    }

    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ModelError> {
        if self.spec.refuse_partial_removal && len > 0 {
            return Err(ModelError::TruncateRefused { seq, len });
        }
        if let Some(c) = self.caches.get_mut(&seq) {
            c.tokens.truncate(len);
            c.hashes.truncate(len + 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_depend_on_the_whole_prefix_and_refuse_gaps() {
        let mut m = MockModel::new(MockSpec::target(1));
        m.decode(0, 0, &[1, 2, 3], 2).unwrap();
        let a = m.logits(0).to_vec();
        m.truncate(0, 0).unwrap();
        m.decode(0, 0, &[9, 2, 3], 2).unwrap();
        assert_ne!(a, m.logits(0));
        assert_eq!(m.decode(0, 5, &[1], 0), Err(ModelError::PositionMismatch { seq: 0, pos: 5, n_cached: 3 }));
        // same prefix, decoded in other batch shapes: same logits
        m.truncate(0, 0).unwrap();
        m.decode(0, 0, &[1], 1).unwrap();
        m.decode(0, 1, &[2, 3], 1).unwrap();
        assert_eq!(a, m.logits(0));
    }

    #[test]
    fn a_draft_agrees_at_its_rate() {
        let t = MockSpec::target(7);
        let mut target = MockModel::new(t.clone());
        let mut draft = MockModel::new(MockSpec::draft_of(&t, 0.7, 1));
        let toks: Vec<Token> = (0..2000).map(|i| (i * 13 % 63 + 1) as Token).collect();
        target.decode(0, 0, &toks[..500], 0).unwrap();
        draft.decode(0, 0, &toks[..500], 0).unwrap();
        let agree = (0..500)
            .filter(|&i| {
                let (a, b) = (argmax(target.logits(i)), argmax(draft.logits(i)));
                a == b
            })
            .count();
        let rate = agree as f64 / 500.0;
        assert!((rate - 0.7).abs() < 0.07, "agreement {rate}");
    }

    #[test]
    fn a_cost_curve_prices_a_decode_by_its_tokens() {
        let spec = MockSpec { cost_curve: vec![(1, 0.010), (8, 0.040), (16, 0.044)], ..MockSpec::target(1) };
        let ms = |n: usize| spec.decode_cost(n).as_secs_f64() * 1e3;
        assert!((ms(1) - 10.0).abs() < 1e-6);
        assert!((ms(12) - 42.0).abs() < 1e-6, "{}", ms(12));
        assert!((ms(24) - 48.0).abs() < 1e-6, "the last slope goes on: {}", ms(24));
        let plain = MockSpec::target(1);
        assert_eq!(plain.decode_cost(3), plain.cost_per_call + plain.cost_per_token * 3);
    }
}

/// A byte-level codec for mock models: each byte of a prompt is one token in `1..n_vocab`,
/// and token `t` prints as a lowercase letter followed by a space (or, with `text`, as one
/// printable character).
#[derive(Debug, Clone, Copy)]
pub struct MockCodec {
    pub n_vocab: usize,
    /// Printable text: tokens `1..=95` are the ASCII characters `' '..='~'` and token 96 is
    /// `\n` (a model with at least 97 tokens), so grammars over text can be tested on mocks.
    pub text: bool,
}

impl crate::model::TextCodec for MockCodec {
    fn tokenize(&self, text: &str) -> Vec<Token> {
        text.bytes()
            .map(|b| match b {
                b' '..=b'~' if self.text => 1 + (b - b' ') as Token,
                b'\n' if self.text => 96,
                _ => 1 + (b as usize % (self.n_vocab - 1)) as Token,
            })
            .collect()
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        match token {
            1..=95 if self.text => vec![b' ' + (token - 1) as u8],
            96 if self.text => vec![b'\n'],
            _ if self.text => Vec::new(),
            _ => vec![b'a' + (token % 26) as u8, b' '],
        }
    }
    fn chat(&self, messages: &[(String, String)]) -> Result<String, String> {
        Ok(messages.iter().map(|(r, c)| format!("<{r}>{c}")).collect::<String>() + "<assistant>")
    }
    fn chat_template(&self) -> Option<String> {
        Some(MOCK_CHAT_TEMPLATE.to_string())
    }
}

/// The mock's Jinja chat template: [`MockCodec`]'s chat format, with tools and calls written
/// the way Hermes-style templates write them (`<tools>`, `<tool_call>`, `<tool_response>`).
pub const MOCK_CHAT_TEMPLATE: &str = concat!(
    "{% if tools %}<system>Tools:<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>",
    " Call one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>{% endif %}",
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}",
    "{% for c in m.tool_calls %}<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}",
    "{% endfor %}<assistant>"
);

/// One piece of a [`MockGrammar`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockSegment {
    /// Exactly these tokens (what a grammar forces: keys, punctuation).
    Literal(Vec<Token>),
    /// Between `min` and `max` tokens from `allowed` (a value); after `min` the next piece may
    /// start instead. The next piece's first token should not be in `allowed`.
    Choice { allowed: Vec<Token>, min: usize, max: usize },
    /// One token of two that spell the same forced text (a quote alone, or a token that also
    /// holds what follows): not forced; `likely` is the spelling a tokenizer gives it.
    Either { likely: Token, other: Token },
}

/// A small deterministic grammar over token ids implementing [`crate::constraint::Constraint`]:
/// pieces in order, then only `eog`. Forced tokens are the rest of a literal piece and the
/// literal pieces right after it, so every engine path under a constraint is testable without
/// llguidance.
#[derive(Debug, Clone)]
pub struct MockGrammar {
    pieces: Arc<Vec<MockSegment>>,
    eog: Token,
    n_vocab: usize,
    /// (piece, tokens taken in it) after each consumed token; the start state below it.
    states: Vec<(usize, usize)>,
}

impl MockGrammar {
    pub fn new(pieces: Vec<MockSegment>, eog: Token, n_vocab: usize) -> Self {
        Self { pieces: Arc::new(pieces), eog, n_vocab, states: vec![(0, 0)] }
    }

    fn state(&self) -> (usize, usize) {
        *self.states.last().unwrap_or(&(0, 0))
    }

    /// A choice that took its maximum ends, a literal taken whole ends.
    fn settle(&self, (mut i, mut n): (usize, usize)) -> (usize, usize) {
        while let Some(p) = self.pieces.get(i) {
            let full = match p {
                MockSegment::Literal(l) => n >= l.len(),
                MockSegment::Choice { max, .. } => n >= *max,
                MockSegment::Either { .. } => n >= 1,
            };
            if !full {
                break;
            }
            (i, n) = (i + 1, 0);
        }
        (i, n)
    }

    /// The state after `t` from `(i, n)`, if the grammar allows it.
    fn step(&self, (i, n): (usize, usize), t: Token) -> Option<(usize, usize)> {
        match self.pieces.get(i)? {
            MockSegment::Literal(l) => (l[n] == t).then(|| self.settle((i, n + 1))),
            MockSegment::Either { likely, other } => (t == *likely || t == *other).then(|| self.settle((i, n + 1))),
            MockSegment::Choice { allowed, min, .. } => {
                if allowed.contains(&t) {
                    Some(self.settle((i, n + 1)))
                } else if n >= *min {
                    self.step(self.settle((i + 1, 0)), t)
                } else {
                    None
                }
            }
        }
    }

    /// The tokens of the literal pieces from the current state on, and the piece after them.
    fn forced_run(&self) -> (Vec<Token>, usize) {
        let (mut i, mut n) = self.state();
        let mut out = Vec::new();
        while let Some(MockSegment::Literal(l)) = self.pieces.get(i) {
            out.extend_from_slice(&l[n..]);
            (i, n) = self.settle((i + 1, 0));
        }
        (out, i)
    }

    fn allowed(&self, (i, n): (usize, usize), out: &mut crate::constraint::TokenMask) {
        match self.pieces.get(i) {
            None => out.allow(self.eog),
            Some(MockSegment::Literal(l)) => out.allow(l[n]),
            Some(MockSegment::Either { likely, other }) => {
                out.allow(*likely);
                out.allow(*other);
            }
            Some(MockSegment::Choice { allowed, min, .. }) => {
                allowed.iter().for_each(|&t| out.allow(t));
                if n >= *min {
                    self.allowed(self.settle((i + 1, 0)), out);
                }
            }
        }
    }
}

impl crate::constraint::Constraint for MockGrammar {
    fn mask(&mut self) -> Result<crate::constraint::TokenMask, crate::constraint::ConstraintError> {
        let mut m = crate::constraint::TokenMask::none(self.n_vocab);
        self.allowed(self.state(), &mut m);
        Ok(m)
    }

    fn forced(&mut self) -> Vec<Token> {
        self.forced_run().0
    }

    fn likely(&mut self, _forced: &[Token]) -> Vec<Token> {
        match self.pieces.get(self.forced_run().1) {
            Some(MockSegment::Either { likely, .. }) => vec![*likely],
            _ => Vec::new(),
        }
    }

    fn validate(&mut self, tokens: &[Token]) -> usize {
        let mut s = self.state();
        for (k, &t) in tokens.iter().enumerate() {
            if t == self.eog {
                return k + usize::from(s.0 >= self.pieces.len());
            }
            match self.step(s, t) {
                Some(next) => s = next,
                None => return k,
            }
        }
        tokens.len()
    }

    fn consume(&mut self, tokens: &[Token]) -> Result<(), crate::constraint::ConstraintError> {
        for &t in tokens {
            let next = self.step(self.state(), t).ok_or_else(|| crate::constraint::ConstraintError(format!("token {t} refused")))?;
            self.states.push(next);
        }
        Ok(())
    }

    fn rollback(&mut self, n: usize) -> Result<(), crate::constraint::ConstraintError> {
        if n >= self.states.len() {
            return Err(crate::constraint::ConstraintError(format!("cannot roll back {n} tokens")));
        }
        self.states.truncate(self.states.len() - n);
        Ok(())
    }

    fn is_accepting(&mut self) -> bool {
        self.state().0 >= self.pieces.len()
    }

    fn boxed_clone(&self) -> Box<dyn crate::constraint::Constraint> {
        Box::new(self.clone())
    }
}
