//! Spreading connections evenly over the workers. `SO_REUSEPORT` picks a worker's
//! socket by a hash of the connection's addresses, so a few long-lived connections
//! can land on one worker while another has none (and the busier one's requests wait
//! longer: its tail latency is everyone's). A worker that accepts a connection while
//! it holds two or more than the least busy worker passes it to that worker, which
//! serves it from then on (HAProxy spreads new connections over its threads by their
//! load too). Counted per connection, never per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;

/// The open connections of every worker, and a way to pass one to each.
#[derive(Debug)]
pub struct Spread {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// A connection accepted by one worker for another to serve.
#[derive(Debug)]
pub struct Handoff {
    pub(super) stream: std::net::TcpStream,
    pub(super) remote: SocketAddr,
    pub(super) slot: OwnedSemaphorePermit,
}

/// One worker's place in a [`Spread`].
#[derive(Debug)]
pub struct Worker {
    index: usize,
    spread: Arc<Spread>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
}

impl Spread {
    /// A spread over `workers` workers, and each worker's place in it.
    pub fn workers(workers: usize) -> Vec<Worker> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let spread = Arc::new(Self {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into(),
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Worker {
                index,
                spread: spread.clone(),
                inbox,
            })
            .collect()
    }

    /// The worker a connection accepted by `me` should go to, if not `me`.
    fn target(&self, me: usize) -> Option<usize> {
        let load = |i: usize| self.open.get(i).map_or(0, |n| n.load(Ordering::Relaxed));
        let (least, fewest) = (0..self.open.len())
            .map(|i| (i, load(i)))
            .min_by_key(|&(_, n)| n)?;
        (least != me && load(me) > fewest + 1).then_some(least)
    }
}

impl Worker {
    /// Passes `handoff` to a less busy worker, or gives it back to be served here.
    pub(super) fn pass(&self, handoff: Handoff) -> Option<Handoff> {
        let Some(target) = self.spread.target(self.index) else {
            return Some(handoff);
        };
        let inbox = self.spread.inboxes.get(target)?;
        match inbox.send(handoff) {
            Ok(()) => {
                // Counted at once, so the next accept sees it.
                if let Some(n) = self.spread.open.get(target) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            // That worker has stopped: served here.
            Err(mpsc::error::SendError(handoff)) => Some(handoff),
        }
    }

    /// The next connection another worker passed here.
    pub(super) async fn next(&mut self) -> Option<Handoff> {
        self.inbox.recv().await
    }

    /// Counts a connection accepted here as open until the returned guard drops.
    pub(super) fn open(&self) -> Open {
        if let Some(n) = self.spread.open.get(self.index) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.counted()
    }

    /// The guard for a connection already counted here (passed by another worker).
    pub(super) fn counted(&self) -> Open {
        Open {
            spread: self.spread.clone(),
            index: self.index,
        }
    }
}

/// A connection counted as open on a worker while it lives.
#[derive(Debug)]
pub(super) struct Open {
    spread: Arc<Spread>,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(n) = self.spread.open.get(self.index) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_least_busy_worker_only_past_a_margin() {
        let workers = Spread::workers(3);
        let spread = &workers[0].spread;
        assert_eq!(spread.target(0), None, "all equal: kept");
        let _a = workers[0].open();
        assert_eq!(spread.target(0), None, "one more than the others: kept");
        let _b = workers[0].open();
        assert_eq!(
            spread.target(0),
            Some(1),
            "two more: to the first of the least busy"
        );
        let _c = workers[1].open();
        assert_eq!(spread.target(0), Some(2));
        drop(_b);
        assert_eq!(spread.target(0), None, "counts fall when connections end");
    }
}
