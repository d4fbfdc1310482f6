//! Where a continuous-batching run hands what it produces: one trait for batch, bench and
//! serve (as ripgrep's searcher hands matches to a `Sink`), and [`Callbacks`] for small
//! embedders and tests.

use crate::engine::{EngineError, Sequence};
use std::ops::Range;

/// The receiving end of a run.
pub trait RunSink<J> {
    /// A job in flight added `seq.tokens[added]` (empty while its prompt is read); its tag is
    /// the sink's to update (a request's text so far, say). True ends
    /// it now (a stop string, a client gone): it finishes with [`crate::stats::FinishReason::Stop`].
    fn tokens(&mut self, _tag: &mut J, _seq: &Sequence, _added: Range<usize>) -> bool {
        false
    }

    /// A job ended: finished, or failed alone (its prompt does not fit). Every job the run
    /// took is handed here once, unless the run is cancelled while it is in flight.
    fn finished(&mut self, tag: J, result: Result<Sequence, EngineError>);

    /// Asked before every round: true stops the run; the jobs in flight are dropped
    /// unfinished and handed to [`RunSink::cancelled`].
    fn cancel(&mut self) -> bool {
        false
    }

    /// A job dropped unfinished by a cancelled run.
    fn cancelled(&mut self, _tag: J) {}
}

type OnTokens<'a, J> = Box<dyn FnMut(&J, &Sequence, Range<usize>) -> bool + 'a>;
type OnFinished<'a, J> = Box<dyn FnMut(J, Result<Sequence, EngineError>) + 'a>;

/// A sink of closures.
pub struct Callbacks<'a, J> {
    tokens: OnTokens<'a, J>,
    finished: OnFinished<'a, J>,
    cancel: Box<dyn FnMut() -> bool + 'a>,
}

impl<'a, J> Callbacks<'a, J> {
    /// Every ended job goes to `finished`; nothing ends a job early; the run is not cancelled.
    pub fn new(finished: impl FnMut(J, Result<Sequence, EngineError>) + 'a) -> Self {
        Self { tokens: Box::new(|_, _, _| false), finished: Box::new(finished), cancel: Box::new(|| false) }
    }

    /// New tokens go to `tokens` ([`RunSink::tokens`]).
    pub fn on_tokens(mut self, tokens: impl FnMut(&J, &Sequence, Range<usize>) -> bool + 'a) -> Self {
        self.tokens = Box::new(tokens);
        self
    }

    /// The run stops when `cancel` says so ([`RunSink::cancel`]).
    pub fn cancel_when(mut self, cancel: impl FnMut() -> bool + 'a) -> Self {
        self.cancel = Box::new(cancel);
        self
    }
}

impl<J> RunSink<J> for Callbacks<'_, J> {
    fn tokens(&mut self, tag: &mut J, seq: &Sequence, added: Range<usize>) -> bool {
        (self.tokens)(tag, seq, added)
    }
    fn finished(&mut self, tag: J, result: Result<Sequence, EngineError>) {
        (self.finished)(tag, result)
    }
    fn cancel(&mut self) -> bool {
        (self.cancel)()
    }
}
