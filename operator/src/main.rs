//! The `trustscale` command.
// No unsafe code, except `allocator_options`, which must hand jemalloc a C symbol and
// says why.
#![deny(unsafe_code)]

mod cli;

/// See the `jemalloc` feature.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options for this binary, read before `main` runs.
///
/// jemalloc is the process's `malloc` (the `jemalloc` feature), so librdkafka's threads
/// allocate with it too: about 330 of them at 10,000 triggers (a main thread and a thread
/// per broker for each of a cluster's 101 clients). Every thread that allocates gets a
/// cache of its own, filled by the batch and emptied only as the thread allocates more;
/// librdkafka's mostly idle threads keep theirs. With jemalloc's default sizes those
/// caches held about 134 MiB at 10,000 triggers with Kafka (RSS 225 MiB against 157 with
/// the C library's malloc, at the soak's base line). Here a thread caches at most 16 blocks
/// of each size up to 1 KiB, and none of larger ones: RSS 164 MiB, the CPU figure
/// unchanged (benches/README.md). `MALLOC_CONF` still overrides them.
///
/// This module holds the binary's one item that `unsafe_code` flags: jemalloc reads its
/// options from the C symbol `malloc_conf` (a weak `const char *` of its own, NULL by
/// default), which only an item exported under that exact name can set.
#[cfg(all(feature = "jemalloc", target_os = "linux"))]
#[allow(unsafe_code)]
mod allocator_options {
    /// A thin pointer to a NUL-terminated string that lives as long as the program and is
    /// never written: what `const char *malloc_conf` expects.
    #[unsafe(no_mangle)]
    #[allow(non_upper_case_globals)]
    static malloc_conf: &u8 = &OPTIONS[0];

    const OPTIONS: &[u8] = b"tcache_max:1024,tcache_nslots_small_max:16\0";
}

/// jemalloc's figures for `/metrics`; empty when they cannot be read.
#[cfg(feature = "jemalloc")]
fn jemalloc_stats() -> trustscale_operator::metrics::AllocatorStats {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The figures are cached by jemalloc until the epoch advances.
    if epoch::advance().is_err() {
        return Vec::new();
    }
    let read = [
        ("allocated", stats::allocated::read()),
        ("active", stats::active::read()),
        ("resident", stats::resident::read()),
        ("retained", stats::retained::read()),
        ("metadata", stats::metadata::read()),
    ];
    read.into_iter()
        .filter_map(|(kind, v)| Some((kind, v.ok()? as u64)))
        .collect()
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "jemalloc")]
    {
        // jemalloc gives freed pages back to the system only when the arena that freed
        // them allocates again; a connection's buffers freed after a broker fault could
        // stay resident for good in a quiet arena. Its background thread purges them on
        // time instead (after `dirty_decay_ms`, 10 s). Best effort: a jemalloc built
        // without the support leaves things as they were.
        let _ = tikv_jemalloc_ctl::background_thread::write(true);
        trustscale_operator::metrics::set_allocator_probe(jemalloc_stats);
    }
    cli::main()
}
