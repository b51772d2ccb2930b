//! Noticing that files changed: the one mechanism every folder we follow uses (the CA
//! folders, the operator's manifests and its certificate folder).
//!
//! A [`FileWatch`] runs on a thread of its own, so it needs no async runtime. It combines
//! two sources, and calls back only when the [`stamp`] of the paths really changed:
//! - file-system events (inotify through `notify`), coalesced: after an event it waits
//!   until the paths have been quiet for a moment (a Secret update is several events);
//! - a periodic re-check of the stamp, which catches missed events, folders that did not
//!   exist yet, and file systems without events.
//!
//! Folders are watched one level deep, never recursively: Kubernetes' atomic writer swaps
//! the `..data` link in the folder itself, and a recursive watch would follow symlinked
//! directories wherever they point. A file is watched through its parent folder.

use std::collections::HashSet;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};

/// The longest a burst of events delays a change: paths that change without pause are
/// compared at most this often, so a change is never starved and never followed more
/// often than this.
pub const MAX_SETTLE: Duration = Duration::from_secs(1);

/// How a [`FileWatch`] waits.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// How long the paths must be quiet after an event before the stamp is compared.
    pub quiet: Duration,
    /// How often the stamp is compared without an event.
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            quiet: Duration::from_millis(50),
            rescan: Duration::from_secs(10),
        }
    }
}

/// A cheap digest of the state of `paths`: for a folder, every entry's name, link target,
/// size, modification time and inode (one level, dot-entries included so that a `..data`
/// swap counts); for a file, the same of the file. A path that does not exist counts as
/// such.
#[must_use]
pub fn stamp(paths: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        path.hash(&mut h);
        match fs::read_dir(path) {
            Ok(entries) => {
                let mut items: Vec<EntryStamp> = entries
                    .filter_map(Result::ok)
                    .map(|e| entry_stamp(&e.path()))
                    .collect();
                items.sort();
                1u8.hash(&mut h);
                items.hash(&mut h);
            }
            Err(_) => {
                2u8.hash(&mut h);
                entry_stamp(path).hash(&mut h);
            }
        }
    }
    h.finish()
}

type EntryStamp = (PathBuf, Option<PathBuf>, u64, Option<SystemTime>, u64);

fn entry_stamp(path: &Path) -> EntryStamp {
    use std::os::unix::fs::MetadataExt as _;
    let link = fs::read_link(path).ok();
    let meta = fs::metadata(path).ok();
    (
        path.to_path_buf(),
        link,
        meta.as_ref().map_or(u64::MAX, fs::Metadata::len),
        meta.as_ref().and_then(|m| m.modified().ok()),
        meta.as_ref().map_or(0, |m| m.ino()),
    )
}

enum Msg {
    Event,
    Stop,
}

/// Follows a set of paths on a thread of its own and calls back when they changed.
/// Dropping it stops the thread (the callback is never called after the thread saw the
/// stop).
#[must_use = "the watch stops when dropped"]
pub struct FileWatch {
    tx: Sender<Msg>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

impl FileWatch {
    /// Starts following `paths` (folders, or files through their folder). `on_change`
    /// runs on the watch thread whenever the [`stamp`] of `paths` differs from the last
    /// one seen (the first stamp is taken now). `what` names the paths in log lines.
    ///
    /// Only a failure to start the thread is an error; a path that cannot be watched
    /// (missing, no inotify) is re-checked on the timer instead, and said so at debug.
    pub fn spawn(
        what: &str,
        paths: Vec<PathBuf>,
        options: WatchOptions,
        mut on_change: impl FnMut() + Send + 'static,
    ) -> std::io::Result<FileWatch> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reads (our own included) are access events: only changes count.
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = events.send(Msg::Event);
            }
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, what, "no file watcher; re-checking on a timer only");
                None
            }
        };
        let what = what.to_string();
        let targets: Vec<PathBuf> = paths
            .iter()
            .map(|p| {
                if p.is_dir() {
                    p.clone()
                } else {
                    match p.parent() {
                        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                        _ => PathBuf::from("."),
                    }
                }
            })
            .collect();
        let mut last = stamp(&paths);
        std::thread::Builder::new()
            .name(format!("trustscale-watch-{what}").chars().take(15).collect())
            .spawn(move || {
                let mut watched: HashSet<PathBuf> = HashSet::new();
                loop {
                    if let Some(w) = watcher.as_mut() {
                        // A folder that vanished loses its watch; one that appeared needs one.
                        watched.retain(|f| f.is_dir());
                        for t in &targets {
                            if !watched.contains(t) && t.is_dir() {
                                match w.watch(t, RecursiveMode::NonRecursive) {
                                    Ok(()) => {
                                        watched.insert(t.clone());
                                    }
                                    Err(e) => {
                                        tracing::debug!(path = %t.display(), error = %e, what = %what, "cannot watch; re-checked on a timer")
                                    }
                                }
                            }
                        }
                    }
                    match rx.recv_timeout(options.rescan) {
                        Ok(Msg::Event) => {
                            // Wait for quiet, but no longer than `MAX_SETTLE`: a folder
                            // rewritten without pause is still followed, once per period.
                            let settle_until = std::time::Instant::now() + MAX_SETTLE;
                            loop {
                                let left = settle_until
                                    .saturating_duration_since(std::time::Instant::now());
                                if left.is_zero() {
                                    break;
                                }
                                match rx.recv_timeout(options.quiet.min(left)) {
                                    Ok(Msg::Event) => {}
                                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                                        return;
                                    }
                                    Err(RecvTimeoutError::Timeout) => break,
                                }
                            }
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    let now = stamp(&paths);
                    if now != last {
                        last = now;
                        on_change();
                    }
                }
            })?;
        Ok(FileWatch { tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_follows_content_links_and_entries() {
        let dir = tempfile_dir();
        let paths = vec![dir.clone()];
        let a = stamp(&paths);
        fs::write(dir.join("x.pem"), "one").unwrap();
        let b = stamp(&paths);
        assert_ne!(a, b, "a new file");
        fs::write(dir.join("x.pem"), "two!").unwrap();
        let c = stamp(&paths);
        assert_ne!(b, c, "a rewrite");
        std::os::unix::fs::symlink("x.pem", dir.join("..data")).unwrap();
        let d = stamp(&paths);
        assert_ne!(c, d, "a dot-entry link");
        assert_eq!(d, stamp(&paths), "nothing changed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_change_is_called_back_once_per_change() {
        let dir = tempfile_dir();
        let (tx, rx) = mpsc::channel();
        let watch = FileWatch::spawn(
            "test",
            vec![dir.clone()],
            WatchOptions {
                quiet: Duration::from_millis(20),
                rescan: Duration::from_millis(200),
            },
            move || {
                let _ = tx.send(());
            },
        )
        .unwrap();
        fs::write(dir.join("a"), "1").unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the change was seen");
        drop(watch);
        fs::write(dir.join("b"), "2").unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(600)).is_err(),
            "no call after the watch was dropped"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trustscale-watch-test-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
