//! What a notified call becomes: the answer the notification loop (`serve`) or a handler of its
//! (`sockopt`) gives the kernel for it. A module of its own so that handlers need not reach
//! back into the loop.

/// What a notified call becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The call returns this value.
    Return(i64),
    /// The call fails with this errno.
    Fail(i32),
    /// The kernel carries the call out as the program made it.
    Continue,
    /// The caller is no longer waiting (a signal, or it died): nothing to answer.
    Gone,
    /// Already answered (ADDFD with SEND made a new descriptor the call's result), or handed
    /// to a worker thread that answers it.
    Answered,
    /// On the loop thread: a step that may wait comes next, and nothing was done yet; the call
    /// starts again on a worker thread.
    Defer,
}
