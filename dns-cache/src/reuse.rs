//! [`Reuse`]: how long one answer may be replayed byte for byte, and what a replay counts.
//!
//! [`crate::resolve`] produces it, [`crate::replies`] keeps encoded answers for that long and
//! [`crate::metrics`] counts a replay as the resolve it stands for; it lives below all three so
//! that none of them depends on another for it.

use crate::clock::UnixMillis;

/// How long an answer may be replayed, and what a replay counts in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// The first instant at which the answer must be resolved again.
    pub until: UnixMillis,
    /// Answer-cache look-ups it took (a replay counts them as hits).
    pub cache_lookups: u8,
    /// It is a synthesised A answer.
    pub synthesised: bool,
    /// It was passed through from upstream.
    pub passed_through: bool,
}
