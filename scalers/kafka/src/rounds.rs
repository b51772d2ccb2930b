//! Concurrent reads of one kind, coalesced into rounds.
//!
//! Every Kafka poll needs the newest offsets of its partitions (one metadata client per
//! cluster) and its group's committed offsets (one reader per group); librdkafka's calls
//! block a thread each. Asked one call per poll, 10,000 triggers on one cluster keep
//! hundreds of threads blocked on one connection. A [`Rounds`] asks once for many: while
//! a round is in flight, requests queue; when it ends, everything queued goes out in the
//! next round, one blocking call for all of it.
//!
//! - A request is answered only by a round that started after it was made: the answer is
//!   never older than the question (a poll right after a produce sees it).
//! - At most one round runs at a time per `Rounds`, so the blocking threads and broker
//!   requests follow the number of clusters and groups, not the number of triggers.
//! - The round runs on a task of its own: a poll that gives up (its timeout) does not stop
//!   the others' round.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

type Queue<Q, A> = Vec<(Q, oneshot::Sender<A>)>;

struct State<Q, A> {
    queued: Queue<Q, A>,
    running: bool,
}

/// Coalesces requests `Q` into rounds answered with one `A` for all.
pub(crate) struct Rounds<Q, A> {
    state: Mutex<State<Q, A>>,
}

impl<Q, A> Default for Rounds<Q, A> {
    fn default() -> Self {
        Rounds {
            state: Mutex::new(State {
                queued: Vec::new(),
                running: false,
            }),
        }
    }
}

impl<Q, A> Rounds<Q, A> {
    fn lock(&self) -> MutexGuard<'_, State<Q, A>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a driver that did not finish normally (its task dropped at shutdown, a panic):
/// the queued requests are answered `None` (their senders dropped) and the next request
/// starts a new driver, instead of waiting for one that is gone.
struct Reset<'a, Q, A> {
    rounds: &'a Rounds<Q, A>,
    finished: bool,
}

impl<Q, A> Drop for Reset<'_, Q, A> {
    fn drop(&mut self) {
        if !self.finished {
            let mut s = self.rounds.lock();
            s.running = false;
            s.queued.clear();
        }
    }
}

impl<Q: Send + 'static, A: Clone + Send + 'static> Rounds<Q, A> {
    /// Queues `q` for the next round and waits for its answer. `run` answers a whole round
    /// (a blocking call, run off the async workers); every caller of one `Rounds` passes
    /// the same function. `None`: the round was lost (the read panicked, or the runtime
    /// is shutting down).
    pub(crate) async fn ask<F>(self: &Arc<Self>, q: Q, run: F) -> Option<A>
    where
        F: Fn(Vec<Q>) -> A + Send + Sync + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.lock();
            s.queued.push((q, tx));
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.drive(Arc::new(run)).await });
        }
        rx.await.ok()
    }

    async fn drive<F>(&self, run: Arc<F>)
    where
        F: Fn(Vec<Q>) -> A + Send + Sync + 'static,
    {
        let mut reset = Reset {
            rounds: self,
            finished: false,
        };
        loop {
            let round = {
                let mut s = self.lock();
                if s.queued.is_empty() {
                    s.running = false;
                    reset.finished = true;
                    return;
                }
                std::mem::take(&mut s.queued)
            };
            let (questions, answer_to): (Vec<Q>, Vec<_>) = round.into_iter().unzip();
            let run = Arc::clone(&run);
            // A panicking read answers nobody (their senders drop: `None`); the next
            // round is asked again.
            if let Ok(answer) = tokio::task::spawn_blocking(move || run(questions)).await {
                for tx in answer_to {
                    let _ = tx.send(answer.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_rounds_and_no_answer_predates_its_question() {
        let rounds: Arc<Rounds<usize, (usize, Vec<usize>)>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
        // Round 0 says it started and waits to be released; each round answers with its
        // number and what it was asked.
        let run = Arc::new({
            let calls = Arc::clone(&calls);
            move |qs: Vec<usize>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    started_tx.lock().unwrap().send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                }
                (n, qs)
            }
        });
        let ask = |i: usize| {
            let (rounds, run) = (Arc::clone(&rounds), Arc::clone(&run));
            tokio::spawn(async move { rounds.ask(i, move |q| run(q)).await })
        };
        let first = ask(0);
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        // Asked while round 0 is in flight: all of them wait for it and go in round 1.
        let later: Vec<_> = (1..=100).map(ask).collect();
        while rounds.lock().queued.len() < 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), (0, vec![0]));
        for (i, h) in later.into_iter().enumerate() {
            let (n, asked) = h.await.unwrap().unwrap();
            assert_eq!(n, 1, "request {} was not in the second round", i + 1);
            assert_eq!(asked.len(), 100);
            assert!(asked.contains(&(i + 1)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "101 requests, 2 rounds");
        // Idle again: the next request starts a round of its own at once.
        assert_eq!(ask(7).await.unwrap().unwrap(), (2, vec![7]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_round_answers_none_and_the_next_round_runs() {
        let rounds: Arc<Rounds<u8, u8>> = Arc::default();
        let lost = rounds
            .ask(1, |_| -> u8 { panic!("the read failed badly") })
            .await;
        assert_eq!(lost, None);
        assert_eq!(rounds.ask(2, |q| q[0] * 10).await, Some(20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_does_not_stop_the_round() {
        let rounds: Arc<Rounds<u8, u8>> = Arc::default();
        let slow = |q: Vec<u8>| {
            std::thread::sleep(Duration::from_millis(100));
            q.iter().sum::<u8>()
        };
        let gives_up = {
            let rounds = Arc::clone(&rounds);
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(10), rounds.ask(1, slow)).await
            })
        };
        assert!(
            gives_up.await.unwrap().is_err(),
            "the first caller timed out"
        );
        // Queued behind the abandoned round, answered by the next.
        assert_eq!(rounds.ask(2, slow).await, Some(2));
    }
}
