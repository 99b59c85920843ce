//! A future that is polled again only once it has asked to be woken.
//!
//! The HTTP/1.1 loop waits for the next request in a `select!` with two futures that
//! almost never finish: the gateway's stop signal and the idle check. `select!` polls
//! every branch each time it is polled, so both were polled once per request: the stop
//! signal's poll takes the lock of the `Notify` that every connection of every worker
//! waits on (a cache line the workers took from each other per request), the timer's
//! poll went through tokio's timer entry. [`Woken`] polls its future with a waker of
//! its own and, until that waker fires, answers `Pending` from an atomic load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// `inner`, polled only after its waker fired (and on the first poll, and when the
/// task polling it changes).
pub(super) struct Woken<F> {
    inner: F,
    signal: Arc<Signal>,
    /// `signal` as a waker: what `inner` is polled with.
    waker: Waker,
    /// The task waker `signal` wakes, to notice a different task polling.
    task: Option<Waker>,
}

struct Signal {
    /// Set by `inner`'s wake-ups, taken by the next poll.
    woken: AtomicBool,
    /// The task to wake. Locked only when the task changes and on a wake-up of
    /// `inner` (rare: the stop signal, an idle tick), never per request.
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F> Woken<F> {
    pub(super) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        Self {
            inner,
            waker: Waker::from(Arc::clone(&signal)),
            signal,
            task: None,
        }
    }

    /// `inner`, to change it (a timer reset, say): the next poll polls it.
    pub(super) fn get_mut(&mut self) -> &mut F {
        self.signal.woken.store(true, Ordering::Release);
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if same_task {
            // Taken before `inner` is polled: a wake-up during its poll is kept for
            // the next one.
            if !this.signal.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
        } else {
            *this
                .signal
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
            this.signal.woken.store(false, Ordering::Release);
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests;
