//! File-change notifications for the operator's folders (certificates, manifests).
//!
//! Every user also re-checks on a timer, so a folder that cannot be watched (or a missed
//! event) only delays a change; it never loses one.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Watches `paths`; each change (not a read: our own reads would loop) sends `()`.
/// Keep the returned watcher alive as long as the receiver is used.
pub fn changes(
    paths: &[(PathBuf, RecursiveMode)],
    what: &str,
) -> (Option<RecommendedWatcher>, UnboundedReceiver<()>) {
    let (tx, rx) = unbounded_channel();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, what, "no file watcher; re-checking on a timer only");
            return (None, rx);
        }
    };
    for (path, mode) in paths {
        if let Err(e) = watcher.watch(path, *mode) {
            tracing::warn!(path = %path.display(), error = %e, what, "cannot watch; re-checking on a timer only");
        }
    }
    (Some(watcher), rx)
}

/// After a first event, waits for the burst to settle (a Secret or editor update is
/// several events) and drains it.
pub async fn settle(rx: &mut UnboundedReceiver<()>, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    while rx.try_recv().is_ok() {}
}
