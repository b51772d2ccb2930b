//! The `trustscale` command.
#![forbid(unsafe_code)]

mod cli;

/// See the `jemalloc` feature.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
