//! Watching the CA folders: a change gives new anchors for new handshakes, no restart.
//!
//! inotify events (through `notify`, recursively, so the `..data` symlink swap of a mounted
//! Secret is seen) trigger a reload after a short quiet period; a periodic re-check of the
//! folders' state catches anything the events missed, and folders created later.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::anchors::folder_stamp;
use super::error::{Result, TrustError};
use super::factory::Inner;

/// How long the folder must be quiet after an event before reloading (a Secret update
/// is several events in a row).
const QUIET: Duration = Duration::from_millis(50);

pub(crate) fn start(inner: &Arc<Inner>) -> Result<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reads (our own included) are access events: only changes count.
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .map_err(TrustError::Watch)?;
    let folders = inner.options.ca_dirs.clone();
    let mut watched: HashSet<PathBuf> = HashSet::new();
    add_watches(&mut watcher, &folders, &mut watched);
    let rescan = inner.options.rescan_interval;
    let weak: Weak<Inner> = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name("trustscale-ca-watch".into())
        .spawn(move || run(watcher, rx, weak, folders, watched, rescan))
        .map_err(|e| TrustError::Watch(notify::Error::io(e)))?;
    Ok(())
}

fn add_watches(watcher: &mut impl Watcher, folders: &[PathBuf], watched: &mut HashSet<PathBuf>) {
    for folder in folders {
        if watched.contains(folder) || !folder.is_dir() {
            continue;
        }
        match watcher.watch(folder, RecursiveMode::Recursive) {
            Ok(()) => {
                watched.insert(folder.clone());
            }
            Err(e) => {
                tracing::warn!(folder = %folder.display(), error = %e, "cannot watch CA folder; it is re-checked periodically instead")
            }
        }
    }
}

fn run(
    mut watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    weak: Weak<Inner>,
    folders: Vec<PathBuf>,
    mut watched: HashSet<PathBuf>,
    rescan: Duration,
) {
    let mut stamp = folder_stamp(&folders);
    loop {
        let evented = match rx.recv_timeout(rescan) {
            Ok(()) => {
                while rx.recv_timeout(QUIET).is_ok() {}
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(inner) = weak.upgrade() else { return };
        // A folder that vanished loses its watch; one that appeared needs one.
        watched.retain(|f| f.is_dir());
        add_watches(&mut watcher, &folders, &mut watched);
        let now = folder_stamp(&folders);
        if evented || now != stamp {
            stamp = now;
            // Errors are logged, counted and kept by `reload`; the last good anchors stay.
            let _ = inner.reload();
        }
    }
}
