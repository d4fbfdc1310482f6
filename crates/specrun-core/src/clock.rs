//! The time source the core is handed: it never reads a clock itself. The binary passes a
//! wall clock; tests pass the mock clock, which mock models advance by a scripted cost, so
//! timing-dependent decisions (draft lengths, the guard, prompt pacing) replay exactly.

use std::time::Duration;

/// A monotonic time source.
pub trait Clock {
    fn now(&self) -> Duration;
}
