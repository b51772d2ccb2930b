//! Hands the C library's freed memory back to the system once a cluster's clients are
//! gone.
//!
//! This module calls C, and says why: librdkafka and OpenSSL allocate with the C
//! library's malloc (the process's Rust allocator never sees those allocations), and
//! glibc keeps what they free in its arenas, one per thread that allocated, for reuse. A
//! cluster's clients are several threads each, with their buffers and TLS state; when a
//! cluster goes (its trust changed, or its triggers went), what they held stays in the
//! process until something else in those arenas asks for it. `malloc_trim(0)` gives the
//! free pages of every arena back. It takes no pointer and only walks the allocator's own
//! free lists under the allocator's locks. Only with glibc; elsewhere nothing is done.
#![allow(unsafe_code)]

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one trim in this time, however many clusters go at once.
const AT_MOST_EVERY: Duration = Duration::from_secs(1);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static LAST: AtomicU64 = AtomicU64::new(0);

/// Trims the C library's heap when dropped: the last field of a cluster, so it drops
/// after the cluster's clients.
#[derive(Default)]
pub struct TrimOnDrop;

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        trim();
    }
}

/// Returns the C library's free memory to the system (at most once a second).
pub fn trim() {
    // Milliseconds since the epoch, plus one so that 0 means "never".
    let now = u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
    let last = LAST.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < AT_MOST_EVERY.as_millis() as u64 {
        return;
    }
    if LAST
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: see the module's documentation; no argument is a pointer.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::trace!(released = released != 0, "trimmed the C library's heap");
    }
}
