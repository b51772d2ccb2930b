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
//!   never older than the question (a poll right after a produce sees it). What the
//!   round's function itself caches is its own business (a topic's partitions are
//!   cached for 15 s).
//! - At most one round runs at a time per `Rounds`, so the blocking threads and broker
//!   requests follow the number of clusters, topics and groups, not of triggers.
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

/// Ends a driver that did not finish normally (its task dropped by a runtime that shuts
/// down, before or after it first ran): the queued requests are answered `None` (their
/// senders dropped) and the next request starts a new driver, instead of waiting for one
/// that is gone. Made before the task is spawned, and moved into it.
struct Reset<Q, A> {
    rounds: Arc<Rounds<Q, A>>,
    finished: bool,
}

impl<Q, A> Drop for Reset<Q, A> {
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
            let reset = Reset {
                rounds: Arc::clone(self),
                finished: false,
            };
            tokio::spawn(Self::drive(reset, Arc::new(run)));
        }
        rx.await.ok()
    }

    async fn drive<F>(mut reset: Reset<Q, A>, run: Arc<F>)
    where
        F: Fn(Vec<Q>) -> A + Send + Sync + 'static,
    {
        loop {
            let round = {
                let mut s = reset.rounds.lock();
                if s.queued.is_empty() {
                    s.running = false;
                    reset.finished = true;
                    return;
                }
                std::mem::take(&mut s.queued)
            };
            // Questions whose askers gave up are not asked.
            let round: Queue<Q, A> = round
                .into_iter()
                .filter(|(_, tx)| !tx.is_closed())
                .collect();
            if round.is_empty() {
                continue;
            }
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
    use std::time::{Duration, Instant};

    type Log = (usize, Vec<usize>);

    /// A round function whose round 0 says it started and waits to be released; each
    /// round answers with its number and what it was asked.
    struct Gated {
        calls: AtomicUsize,
        started: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    fn gated() -> (
        Arc<Gated>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let g = Arc::new(Gated {
            calls: AtomicUsize::new(0),
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
        });
        (g, started, release)
    }

    fn ask(
        rounds: &Arc<Rounds<usize, Log>>,
        g: &Arc<Gated>,
        i: usize,
    ) -> tokio::task::JoinHandle<Option<Log>> {
        let (rounds, g) = (Arc::clone(rounds), Arc::clone(g));
        tokio::spawn(async move {
            rounds
                .ask(i, move |qs| {
                    let n = g.calls.fetch_add(1, Ordering::SeqCst);
                    if n == 0 {
                        g.started.lock().unwrap().send(()).unwrap();
                        g.release.lock().unwrap().recv().unwrap();
                    }
                    (n, qs)
                })
                .await
        })
    }

    async fn wait_started(started: std::sync::mpsc::Receiver<()>) {
        tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("round 0 never started");
    }

    async fn wait_queued<Q, A>(rounds: &Rounds<Q, A>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while rounds.lock().queued.len() < n {
            assert!(Instant::now() < deadline, "{n} requests never queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_rounds_and_no_answer_predates_its_question() {
        let rounds: Arc<Rounds<usize, Log>> = Arc::default();
        let (g, started, release) = gated();
        let first = ask(&rounds, &g, 0);
        wait_started(started).await;
        // Asked while round 0 is in flight: all of them wait for it and go in round 1.
        let later: Vec<_> = (1..=100).map(|i| ask(&rounds, &g, i)).collect();
        wait_queued(&rounds, 100).await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), (0, vec![0]));
        for (i, h) in later.into_iter().enumerate() {
            let (n, asked) = h.await.unwrap().unwrap();
            assert_eq!(n, 1, "request {} was not in the second round", i + 1);
            assert_eq!(asked.len(), 100);
            assert!(asked.contains(&(i + 1)));
        }
        assert_eq!(g.calls.load(Ordering::SeqCst), 2, "101 requests, 2 rounds");
        // Idle again: the next request starts a round of its own at once.
        assert_eq!(ask(&rounds, &g, 7).await.unwrap().unwrap(), (2, vec![7]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_give_up_stop_no_round() {
        let rounds: Arc<Rounds<usize, Log>> = Arc::default();
        let (g, started, release) = gated();
        // The caller whose request started the rounds, and one queued behind it, give up.
        let starter = ask(&rounds, &g, 0);
        wait_started(started).await;
        let quitter = ask(&rounds, &g, 1);
        wait_queued(&rounds, 1).await;
        let stays = ask(&rounds, &g, 2);
        wait_queued(&rounds, 2).await;
        starter.abort();
        quitter.abort();
        // Both are gone (their futures dropped) before round 0 ends.
        assert!(starter.await.unwrap_err().is_cancelled());
        assert!(quitter.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        // The rounds go on: the one who stayed is answered by the next round, which does
        // not ask the question of the one who left.
        assert_eq!(stays.await.unwrap().unwrap(), (1, vec![2]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_round_answers_none_and_the_next_round_runs() {
        let rounds: Arc<Rounds<u8, u8>> = Arc::default();
        // One function for every caller (as the contract says): it panics when asked 1.
        let run = |q: Vec<u8>| -> u8 {
            assert!(!q.contains(&1), "the read failed badly");
            q[0] * 10
        };
        assert_eq!(rounds.ask(1, run).await, None);
        assert_eq!(rounds.ask(2, run).await, Some(20));
    }

    #[test]
    fn a_driver_dropped_by_a_stopping_runtime_leaves_the_rounds_usable() {
        let rounds: Arc<Rounds<u8, u8>> = Arc::default();
        // A runtime that stops while a round is queued: its driver task is dropped, maybe
        // before it ever ran.
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = Arc::clone(&rounds);
            rt.block_on(async move {
                // Queue the request and spawn its driver (one poll of the request), then
                // stop: block_on returns before the runtime ever polls the driver's task.
                let mut pending = Box::pin(r.ask(1, |q| q[0]));
                std::future::poll_fn(|cx| {
                    let _ = pending.as_mut().poll(cx);
                    std::task::Poll::Ready(())
                })
                .await;
                assert!(r.lock().running, "the request started a driver");
            });
            rt.shutdown_background();
        }
        let s = rounds.lock();
        assert!(!s.running, "the rounds still think a driver runs");
        assert!(s.queued.is_empty());
        drop(s);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(rounds.ask(3, |q| q[0] + 1)), Some(4));
    }
}
