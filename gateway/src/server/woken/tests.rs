use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::Woken;

/// Pending until `ready` is set; counts its polls and keeps the last waker it got.
#[derive(Default)]
struct Probe {
    polls: AtomicUsize,
    ready: Mutex<bool>,
    waker: Mutex<Option<Waker>>,
}

impl Probe {
    fn finish(&self) {
        *self.ready.lock().unwrap() = true;
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

struct Polled(Arc<Probe>);

impl Future for Polled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.polls.fetch_add(1, Ordering::SeqCst);
        if *self.0.ready.lock().unwrap() {
            return Poll::Ready(());
        }
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task waker that counts its wake-ups.
#[derive(Default)]
struct Task(AtomicUsize);

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_inner_future_is_polled_again_only_after_its_waker_fired() {
    let probe = Arc::new(Probe::default());
    let mut woken = Woken::new(Polled(probe.clone()));
    let task = Arc::new(Task::default());
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);

    for _ in 0..10 {
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
    }
    assert_eq!(
        probe.polls.load(Ordering::SeqCst),
        1,
        "polled before any wake-up"
    );

    probe.finish();
    assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was not woken");
    assert!(Pin::new(&mut woken).poll(&mut cx).is_ready());
    assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
}

#[test]
fn another_task_polling_polls_the_inner_future_and_is_the_one_woken() {
    let probe = Arc::new(Probe::default());
    let mut woken = Woken::new(Polled(probe.clone()));
    let (first, second) = (Arc::new(Task::default()), Arc::new(Task::default()));
    let first_waker = Waker::from(first.clone());
    let second_waker = Waker::from(second.clone());

    assert!(
        Pin::new(&mut woken)
            .poll(&mut Context::from_waker(&first_waker))
            .is_pending()
    );
    assert!(
        Pin::new(&mut woken)
            .poll(&mut Context::from_waker(&second_waker))
            .is_pending()
    );
    assert_eq!(probe.polls.load(Ordering::SeqCst), 2);

    probe.finish();
    assert_eq!(first.0.load(Ordering::SeqCst), 0);
    assert_eq!(second.0.load(Ordering::SeqCst), 1);
}

#[test]
fn get_mut_makes_the_next_poll_poll_the_inner_future() {
    let probe = Arc::new(Probe::default());
    let mut woken = Woken::new(Polled(probe.clone()));
    let waker = Waker::from(Arc::new(Task::default()));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());

    *woken.get_mut().0.ready.lock().unwrap() = true;
    assert!(Pin::new(&mut woken).poll(&mut cx).is_ready());
    assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_timer_in_a_select_fires_at_its_deadline() {
    let started = tokio::time::Instant::now();
    let mut sleep = Woken::new(Box::pin(tokio::time::sleep(Duration::from_secs(3))));
    let mut ticks = 0u32;
    // Bounded: a timer whose wake-up were lost would leave the loop running.
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                biased;
                () = &mut sleep => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => ticks += 1,
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the timer never fired");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(ticks >= 29, "the other branch ran {ticks} times");
}

#[tokio::test]
async fn a_stop_signal_sent_from_another_task_ends_the_wait() {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let stopped = rx.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    let mut stopped = Woken::new(stopped);
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(true).unwrap();
        tx
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut stopped).await;
    assert!(matches!(ended, Ok(Ok(_))), "the stop was not seen");
    drop(sender.await.unwrap());
}
