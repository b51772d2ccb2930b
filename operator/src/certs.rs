//! The internal certificates, kept current: generated and rotated (rotation on) or the
//! user's own (rotation off), and every valid change published to the server without a
//! restart. A broken or mismatched set is refused; the last good one keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use trustscale::trust::{ServerTls, TrustFactory};
use trustscale::watch::{FileWatch, WatchOptions, stamp};

use crate::authn::{Authenticator, RequestHeaderOptions};
use crate::metrics::Metrics;
use crate::pki::{self, PkiError, PkiOptions};
use crate::secretstore::SecretStore;

/// How often the certificate folder is re-checked without a file event.
const CERT_RESCAN: Duration = Duration::from_secs(2);
/// How often the Secret is read without a change event (it is watched).
const SECRET_RESYNC: Duration = Duration::from_secs(60);
/// How soon a failed Secret round is tried again.
const SECRET_RETRY: Duration = Duration::from_secs(2);

/// Keeps the serving certificate current.
pub struct CertManager {
    dir: PathBuf,
    rotation: bool,
    opts: PkiOptions,
    server: Arc<ServerTls>,
    /// The same identity, no client certificate asked for (the admission webhook).
    webhook: Arc<ServerTls>,
    authn: Arc<Authenticator>,
    /// `ca.crt` as PEM, as it is served (every CA during an overlap).
    ca_bundle: tokio::sync::watch::Sender<String>,
    /// With rotation, the Secret every replica shares (the folder is then its copy).
    secret: std::sync::OnceLock<SecretStore>,
    /// With leader election, only the leader rotates the Secret's certificates.
    leadership: std::sync::OnceLock<Arc<crate::leader::Leadership>>,
    /// The identity and internal CAs served now (to rebuild the server configuration
    /// when only the request-header CAs change).
    current: Mutex<(
        trustscale::trust::ServerIdentity,
        Vec<rustls_pki_types::CertificateDer<'static>>,
    )>,
    metrics: Arc<Metrics>,
    /// The folder's [`stamp`] when it was last read, valid or not.
    seen: Mutex<u64>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("dir", &self.dir)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Makes sure the folder holds a valid set (rotation on: generating one if needed) and
    /// builds the server configuration from it.
    pub fn start(
        dir: PathBuf,
        rotation: bool,
        opts: PkiOptions,
        trust: &TrustFactory,
        request_header: Option<RequestHeaderOptions>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<CertManager>, PkiError> {
        if rotation {
            let (action, _) = pki::ensure(&dir, &opts, SystemTime::now())?;
            report(&dir, &action, &metrics);
        }
        let seen = stamp(&watched(&dir, request_header.as_ref()));
        let set = pki::load(&dir)?;
        let leaf = pki::validate(&dir, &set, SystemTime::now())?;
        let front = front_proxy_ca(request_header.as_ref())?;
        let (identity, ca) = pki::identity(&set);
        let webhook = Arc::new(trust.server_tls_no_client_auth(identity.clone())?);
        let identity_copy = identity.clone();
        let server = Arc::new(trust.server_tls(identity, &client_cas(&ca, &front))?);
        let authn = Arc::new(
            Authenticator::new(request_header, &ca, &front)
                .map_err(|reason| PkiError::RequestHeaderCa { reason })?,
        );
        metrics.cert_expiry_seconds.set(expiry_in(leaf.not_after));
        Ok(Arc::new(CertManager {
            seen: Mutex::new(seen),
            dir,
            rotation,
            opts,
            server,
            webhook,
            authn,
            ca_bundle: tokio::sync::watch::Sender::new(trustscale::trust::material::certs_to_pem(
                &ca,
            )),
            secret: std::sync::OnceLock::new(),
            leadership: std::sync::OnceLock::new(),
            current: Mutex::new((identity_copy, ca)),
            metrics,
        }))
    }

    /// Sets the request-header settings and CAs (from the cluster) and serves them: new
    /// handshakes accept the front proxy's certificate, or no longer do.
    pub fn set_front_proxy(
        &self,
        front: Option<(
            RequestHeaderOptions,
            Vec<rustls_pki_types::CertificateDer<'static>>,
        )>,
    ) -> Result<(), PkiError> {
        // Held while both configurations change, so a reload cannot interleave. The
        // server's configuration goes first: if it is refused, nothing changed.
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (identity, ca) = current.clone();
        let front_cas = front.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        self.server.update(identity, &client_cas(&ca, &front_cas))?;
        self.authn
            .set_front(front)
            .map_err(|reason| PkiError::RequestHeaderCa { reason })?;
        Ok(())
    }

    /// The webhook's server configuration: the same identity, no client certificate.
    #[must_use]
    pub fn webhook_server(&self) -> Arc<ServerTls> {
        Arc::clone(&self.webhook)
    }

    /// With leader election: rotate the Secret's certificates only while leading. Once
    /// only; later calls are ignored.
    pub fn use_leadership(&self, leadership: Arc<crate::leader::Leadership>) {
        let _ = self.leadership.set(leadership);
    }

    /// Keeps the certificates in `store` from now on (rotation on: the Secret is the truth
    /// and the folder its copy). Once only; later calls are ignored.
    pub fn use_secret(&self, store: SecretStore) {
        let _ = self.secret.set(store);
    }

    /// The CA bundle clients must trust (`ca.crt` as PEM), changed with every reload
    /// that changes it.
    #[must_use]
    pub fn ca_bundle(&self) -> tokio::sync::watch::Receiver<String> {
        self.ca_bundle.subscribe()
    }

    /// Who calls the API (its CAs follow every reload).
    #[must_use]
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.authn)
    }

    fn watched(&self) -> Vec<PathBuf> {
        watched(&self.dir, self.authn.request_header())
    }

    /// The server configuration (swapped on every reload).
    #[must_use]
    pub fn server(&self) -> Arc<ServerTls> {
        Arc::clone(&self.server)
    }

    /// Re-reads the folder and publishes it if it changed and is valid.
    pub fn reload(&self) -> Result<bool, PkiError> {
        let now_stamp = stamp(&self.watched());
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now_stamp {
                return Ok(false);
            }
            // Also for a broken set: the same broken set is not re-read (and re-logged)
            // on every rescan; any change to it is.
            *seen = now_stamp;
        }
        let result = pki::load(&self.dir).and_then(|set| {
            let leaf = pki::validate(&self.dir, &set, SystemTime::now())?;
            // A request-header CA file that cannot be used keeps the last good CAs; it
            // never holds back the internal certificates.
            let file_front = match front_proxy_ca(self.authn.request_header()) {
                Ok(f) if self.authn.request_header().is_some() => Some(f),
                Ok(_) => None,
                Err(e) => {
                    self.metrics.reloaded("requestheader_ca", false);
                    tracing::error!(error = %e, "the request-header CA file is refused; the last good one stays");
                    None
                }
            };
            let (identity, ca) = pki::identity(&set);
            let mut current = self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // The folder changed but not the set (a staged round of the Secret's, say).
            if file_front.is_none() && current.0.chain == identity.chain && current.1 == ca {
                return Ok(None);
            }
            self.authn
                .update(&ca, file_front.as_deref())
                .map_err(|reason| PkiError::RequestHeaderCa { reason })?;
            self.server.update(
                identity.clone(),
                &client_cas(&ca, &self.authn.front_proxy_cas()),
            )?;
            self.webhook.update(identity.clone(), &[])?;
            *current = (identity, ca.clone());
            drop(current);
            let leaf = Some(leaf);
            let pem = trustscale::trust::material::certs_to_pem(&ca);
            self.ca_bundle.send_if_modified(|current| {
                let changed = *current != pem;
                if changed {
                    *current = pem;
                }
                changed
            });
            Ok(leaf)
        });
        match result {
            Ok(None) => Ok(false),
            Ok(Some(leaf)) => {
                self.metrics
                    .cert_expiry_seconds
                    .set(expiry_in(leaf.not_after));
                self.metrics.reloaded("certs", true);
                tracing::info!(dir = %self.dir.display(), "internal certificates reloaded; new handshakes use them");
                Ok(true)
            }
            Err(e) => {
                self.metrics.reloaded("certs", false);
                tracing::error!(dir = %self.dir.display(), error = %trustscale::error::Chain(&e), "internal certificates refused; the last good ones keep serving");
                if !matches!(
                    e,
                    PkiError::Invalid { .. } | PkiError::RequestHeaderCa { .. }
                ) {
                    // A read that failed half-way (a rotation under way): read again.
                    *self
                        .seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = 0;
                }
                Err(e)
            }
        }
    }

    /// Follows the folder (and rotates, with rotation on) until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let changed = Arc::new(tokio::sync::Notify::new());
        let notify = Arc::clone(&changed);
        let _watch = FileWatch::spawn(
            "certs",
            self.watched(),
            WatchOptions {
                quiet: Duration::from_millis(30),
                rescan: CERT_RESCAN,
            },
            move || notify.notify_one(),
        )
        .inspect_err(|e| tracing::warn!(error = %e, dir = %self.dir.display(), "cannot follow the certificate folder; re-checking on a timer only"))
        .ok();
        let secret = self.secret.get().cloned();
        let mut secret_changes: std::pin::Pin<Box<dyn futures_util::Stream<Item = ()> + Send>> =
            match &secret {
                Some(s) => Box::pin(s.changes()),
                None => Box::pin(futures_util::stream::pending()),
            };
        let mut next_sync = std::time::Instant::now();
        loop {
            let mut wait = CERT_RESCAN;
            if let Some(store) = &secret {
                if std::time::Instant::now() >= next_sync {
                    next_sync = std::time::Instant::now() + SECRET_RETRY;
                    let may_rotate = self.leadership.get().is_none_or(|l| l.leading());
                    match store.sync(&self.dir, &self.opts, may_rotate).await {
                        Ok(round) => {
                            report(&self.dir, &round.action, &self.metrics);
                            if round.adopted {
                                tracing::info!(secret = %store.describe(), "internal certificates taken from the Secret");
                            }
                            if round.written {
                                tracing::info!(secret = %store.describe(), "internal certificates written to the Secret");
                            }
                            let due = round
                                .next
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            next_sync = std::time::Instant::now() + due.min(SECRET_RESYNC);
                        }
                        Err(e) => {
                            tracing::error!(error = %trustscale::error::Chain(&e), "keeping the certificates in their Secret failed; retrying")
                        }
                    }
                }
                wait = wait.min(next_sync.saturating_duration_since(std::time::Instant::now()));
            } else if self.rotation {
                match pki::ensure(&self.dir, &self.opts, SystemTime::now()) {
                    Ok((action, next)) => {
                        report(&self.dir, &action, &self.metrics);
                        wait = wait.min(next.duration_since(SystemTime::now()).unwrap_or_default());
                    }
                    Err(e) => {
                        tracing::error!(error = %trustscale::error::Chain(&e), "certificate rotation failed; retrying")
                    }
                }
            }
            let _ = self.reload();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified() => {}
                Some(()) = futures_util::StreamExt::next(&mut secret_changes) => {
                    // Another replica's write: adopt it now.
                    next_sync = std::time::Instant::now();
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// The paths whose changes are followed: the certificate folder and the request-header
/// CA bundle.
fn watched(dir: &std::path::Path, request_header: Option<&RequestHeaderOptions>) -> Vec<PathBuf> {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(request_header.map(|o| o.client_ca_file.clone()));
    paths
}

fn front_proxy_ca(
    request_header: Option<&RequestHeaderOptions>,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    request_header
        .map(RequestHeaderOptions::read_ca)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|reason| PkiError::RequestHeaderCa { reason })
}

/// The CAs the server accepts client certificates from: the internal ones, then the
/// request-header CAs ([`Authenticator`] tells them apart on every request).
fn client_cas(
    internal: &[rustls_pki_types::CertificateDer<'static>],
    front_proxy: &[rustls_pki_types::CertificateDer<'static>],
) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    internal.iter().chain(front_proxy).cloned().collect()
}

/// Says what rotation did: at info when it was due, at warn when something was broken.
pub(crate) fn report(dir: &std::path::Path, action: &pki::Action, metrics: &Metrics) {
    let dir = dir.display();
    match action {
        pki::Action::Kept => {}
        pki::Action::Generated(why) => {
            tracing::info!(%dir, reason = %why, "internal CA and serving certificate generated")
        }
        pki::Action::RepairedLeaf(why) => tracing::warn!(
            %dir,
            reason = %why,
            "the serving certificate was unusable; a new one was issued by the existing CA, which clients keep trusting"
        ),
        pki::Action::ReplacedCa(why) => {
            metrics.ca_replaced.inc();
            tracing::warn!(
                %dir,
                reason = %why,
                "the internal CA was unusable and was replaced: clients that hold the old caBundle are refused until they get the new one"
            )
        }
        other => tracing::info!(%dir, action = ?other, "internal certificates rotated"),
    }
}

fn expiry_in(not_after: i64) -> f64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    (not_after - now) as f64
}
