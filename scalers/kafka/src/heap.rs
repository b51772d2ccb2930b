//! Gives the C library's free heap pages back to the system, every 30 s.
//!
//! librdkafka, and the OpenSSL it links, allocate with the C library's malloc, not with the
//! process's Rust allocator. glibc keeps what they free inside its arenas, resident, unless
//! it happens to sit at an arena's top. When every broker of a cluster goes away, each of
//! its clients re-bootstraps (one more broker thread and TLS state per client); what they
//! free once the brokers are back stays resident: about 19 MiB for 101 clients, which
//! `malloc_trim(0)` gave back in one call (benches/README.md). So a task does that call
//! every 30 s, on the blocking pool, while the runtime that started it runs; the first
//! Kafka trigger built on a runtime starts it. `malloc_trim` is C, hence this module's
//! `unsafe`: it takes no pointer and has no precondition.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    const EVERY: Duration = Duration::from_secs(30);

    /// Set while a trimming task runs.
    static RUNNING: AtomicBool = AtomicBool::new(false);

    /// Clears [`RUNNING`] when the task ends (its runtime shut down), so that a later
    /// runtime starts its own.
    struct Running;

    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }

    pub(crate) fn start() {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if RUNNING.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Running;
        handle.spawn(async move {
            let _running = running;
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if tokio::task::spawn_blocking(trim).await.is_err() {
                    return;
                }
            }
        });
    }

    fn trim() {
        let start = Instant::now();
        // SAFETY: malloc_trim takes a byte count, no pointer, and glibc documents it as
        // safe to call from any thread at any time (MT-Safe): it takes each arena's lock.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        tracing::trace!(released, took = ?start.elapsed(), "gave the C library's free heap pages back");
    }
}

/// Starts the trimming task on the current runtime, unless one runs (nothing on other
/// C libraries than glibc's, or outside a runtime).
pub(crate) fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::start();
}
