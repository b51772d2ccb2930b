//! Gives the C library's free heap pages back to the system, every 30 s.
//!
//! librdkafka, and the OpenSSL it links, allocate with the C library's malloc, not with the
//! process's Rust allocator, unless the program puts another allocator in `malloc`'s place
//! (the `trustscale` binary does, with jemalloc; the trim then finds nothing to give back).
//! glibc keeps what they free inside its arenas, resident, unless it happens to sit at an
//! arena's top. When every broker of a cluster goes away, each of
//! its clients re-bootstraps (one more broker thread and TLS state per client); what they
//! free once the brokers are back stays resident: about 19 MiB for 101 clients, which
//! `malloc_trim(0)` gave back in one call (benches/README.md). The heap is the process's,
//! not a runtime's: one thread of its own does that call every 30 s, started by the first
//! Kafka trigger built. `malloc_trim` is C, hence the one `unsafe` block below: it takes no
//! pointer and has no precondition.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::time::{Duration, Instant};

    const EVERY: Duration = Duration::from_secs(30);

    pub(crate) fn start() {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("malloc-trim".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(EVERY);
                        trim();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the thread that gives the C library's free heap back; it stays with the process");
            }
        });
    }

    #[allow(unsafe_code)]
    fn trim() {
        let start = Instant::now();
        // SAFETY: malloc_trim takes a byte count, no pointer, and glibc documents it as
        // MT-Safe (it takes each arena's lock), so it may be called from any thread.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        let took = start.elapsed();
        if took > Duration::from_millis(5) {
            tracing::debug!(released, ?took, "gave the C library's free heap pages back");
        } else {
            tracing::trace!(released, ?took, "gave the C library's free heap pages back");
        }
    }
}

/// Starts the trimming thread once per process (nothing on other C libraries than
/// glibc's).
pub(crate) fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::start();
}
