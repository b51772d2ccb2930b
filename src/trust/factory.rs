//! [`TrustFactory`]: one per process; owns the anchors and makes every TLS context.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::ServerName;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::anchors::{self, Anchors, DEFAULT_CA_DIR, LoadOptions, SystemRoots};
use super::context::{ContextInner, Fingerprint, Identity, TlsContext};
use super::error::{Result, TrustError};
use super::material::{self, MAX_MATERIAL_BYTES};
use super::server::{ServerIdentity, ServerTls};
use super::settings::{TlsSettings, UnsafeSslPolicy};
use super::version::{CLIENT_MIN_TLS_ENV, SERVICE_MIN_TLS_ENV, TlsVersion};
use super::{danger, verify};
use crate::pool::SharedPool;
use crate::watch::{FileWatch, WatchOptions};

/// The `tracing` target of the one-line-per-file reports about the CA folders (a tool that
/// prints its own report of the files, such as `trust inspect`, can turn them off).
pub const CA_FILES_LOG_TARGET: &str = "trustscale::trust::ca_files";

/// How a [`TrustFactory`] is set up.
#[derive(Clone, Debug)]
#[must_use]
pub struct TrustOptions {
    /// Custom CA folders, merged with the system roots (default `/custom/ca`).
    pub ca_dirs: Vec<PathBuf>,
    /// Minimum TLS version of scaler clients (`KEDA_HTTP_MIN_TLS_VERSION`, default TLS12).
    pub client_min_tls: TlsVersion,
    /// Minimum TLS version of the internal service (`KEDA_SERVICE_MIN_TLS_VERSION`,
    /// default TLS13).
    pub service_min_tls: TlsVersion,
    /// What `unsafeSsl: true` does.
    pub unsafe_ssl: UnsafeSslPolicy,
    /// Watch the CA folders and reload on change.
    pub watch: bool,
    /// Include the platform's root certificates.
    pub system_roots: bool,
    /// The largest file read from a CA folder.
    pub max_file_bytes: u64,
    /// Which files a trigger's `ca`, `cert` and `key` may name.
    pub file_params: material::FileParams,
    /// The TLS 1.2 cipher suites scaler clients offer (`KEDA_HTTP_TLS_CIPHER_LIST`);
    /// `None`: every one this build has. TLS 1.3 suites are always offered.
    pub client_cipher_suites: Option<Vec<rustls::CipherSuite>>,
    /// The TLS 1.2 cipher suites the internal service accepts
    /// (`KEDA_SERVICE_TLS_CIPHER_LIST`); `None`: every one.
    pub service_cipher_suites: Option<Vec<rustls::CipherSuite>>,
    /// With `watch`, how often the folders are also re-checked without an event (a safety
    /// net for missed events and folders created later).
    pub rescan_interval: Duration,
}

impl Default for TrustOptions {
    fn default() -> Self {
        TrustOptions {
            ca_dirs: vec![PathBuf::from(DEFAULT_CA_DIR)],
            client_min_tls: TlsVersion::Tls12,
            service_min_tls: TlsVersion::Tls13,
            unsafe_ssl: UnsafeSslPolicy::AllowWithWarning,
            watch: false,
            system_roots: true,
            max_file_bytes: MAX_MATERIAL_BYTES,
            file_params: material::FileParams::Any,
            client_cipher_suites: None,
            service_cipher_suites: None,
            rescan_interval: Duration::from_secs(10),
        }
    }
}

impl TrustOptions {
    /// Defaults, with the minimum versions read from `KEDA_HTTP_MIN_TLS_VERSION` and
    /// `KEDA_SERVICE_MIN_TLS_VERSION`. An invalid value is an error.
    pub fn from_env() -> Result<Self> {
        Ok(TrustOptions {
            client_min_tls: TlsVersion::from_env(CLIENT_MIN_TLS_ENV, TlsVersion::Tls12)?,
            service_min_tls: TlsVersion::from_env(SERVICE_MIN_TLS_ENV, TlsVersion::Tls13)?,
            client_cipher_suites: super::ciphers::cipher_list_from_env(
                super::ciphers::CLIENT_CIPHERS_ENV,
            )?,
            service_cipher_suites: super::ciphers::cipher_list_from_env(
                super::ciphers::SERVICE_CIPHERS_ENV,
            )?,
            ..TrustOptions::default()
        })
    }
    /// Replaces the CA folders.
    pub fn ca_dirs(mut self, dirs: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.ca_dirs = dirs.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the client minimum TLS version.
    pub fn client_min_tls(mut self, v: TlsVersion) -> Self {
        self.client_min_tls = v;
        self
    }
    /// Sets the service minimum TLS version.
    pub fn service_min_tls(mut self, v: TlsVersion) -> Self {
        self.service_min_tls = v;
        self
    }
    /// Sets the `unsafeSsl` policy.
    pub fn unsafe_ssl(mut self, p: UnsafeSslPolicy) -> Self {
        self.unsafe_ssl = p;
        self
    }
    /// Turns watching of the CA folders on or off.
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }
    /// Includes the system roots or not.
    pub fn system_roots(mut self, on: bool) -> Self {
        self.system_roots = on;
        self
    }
    /// Sets which files a trigger's `ca`, `cert` and `key` may name.
    pub fn file_params(mut self, policy: material::FileParams) -> Self {
        self.file_params = policy;
        self
    }
    /// Sets the rescan interval of the watcher.
    pub fn rescan_interval(mut self, every: Duration) -> Self {
        self.rescan_interval = every;
        self
    }
}

/// Counters and state worth showing to an operator.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustStats {
    /// Triggers that used `unsafeSsl` (each warned once).
    pub unsafe_ssl_triggers: usize,
    /// Contexts handed out with verification off.
    pub unsafe_ssl_uses: u64,
    /// Context requests refused because `unsafeSsl` is forbidden.
    pub unsafe_ssl_refused: u64,
    /// Successful reloads of the CA folders.
    pub reloads: u64,
    /// Failed reloads (the last good anchors were kept).
    pub failed_reloads: u64,
    /// The reason of the last failed reload.
    pub last_reload_error: Option<String>,
    /// Files of the CA folders that were rejected (now).
    pub rejected_files: usize,
    /// Contexts built (cache misses).
    pub contexts_built: u64,
    /// Context requests served from the cache.
    pub cache_hits: u64,
    /// Current anchors generation.
    pub generation: u64,
    /// Current number of anchors.
    pub anchors: usize,
}

#[derive(Default)]
struct Counters {
    unsafe_uses: AtomicU64,
    unsafe_refused: AtomicU64,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
    built: AtomicU64,
    hits: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    settings: TlsSettings,
    /// (length, modification time) of every file named by the settings.
    stamps: Vec<FileStamp>,
    generation: u64,
}

pub(crate) struct Inner {
    /// This factory among every factory the process made (never reused, unlike an
    /// address): the key that keeps one factory's clients apart from another's.
    pub(crate) id: u64,
    pub options: TrustOptions,
    provider: Arc<CryptoProvider>,
    /// The provider of the internal service (its own cipher list).
    service_provider: Arc<CryptoProvider>,
    system: SystemRoots,
    anchors: ArcSwap<Anchors>,
    cache: SharedPool<CacheKey, ContextInner>,
    unsafe_triggers: Mutex<HashSet<String>>,
    logged_files: Mutex<HashSet<(PathBuf, String)>>,
    last_reload_error: Mutex<Option<String>>,
    counters: Counters,
    generation_tx: tokio::sync::watch::Sender<u64>,
    reload_lock: Mutex<()>,
    /// Follows the CA folders (with `watch`); stops with the factory.
    watch: OnceLock<FileWatch>,
}

/// The one TLS context factory of a process. Cheap to clone (an `Arc` inside).
///
/// It owns the trust anchors (system roots merged with the custom CA folders), turns a
/// trigger's [`TlsSettings`] into a [`TlsContext`], and builds the internal service's
/// [`ServerTls`].
#[derive(Clone)]
pub struct TrustFactory {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for TrustFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let anchors = self.anchors();
        f.debug_struct("TrustFactory")
            .field("ca_dirs", &self.inner.options.ca_dirs)
            .field("anchors", &anchors.len())
            .field("generation", &anchors.generation())
            .finish_non_exhaustive()
    }
}

impl TrustFactory {
    /// Reads the system roots and the CA folders, and starts watching them if asked.
    ///
    /// Bad files are reported and skipped; only a CA folder that exists but cannot be
    /// listed is an error here.
    pub fn new(options: TrustOptions) -> Result<Self> {
        if options.client_min_tls.is_below_floor() {
            tracing::warn!(
                min = %options.client_min_tls,
                "minimum client TLS version is below TLS 1.2; TLS 1.2 is the lowest version this build speaks, so TLS12 is enforced"
            );
        }
        if options.service_min_tls.is_below_floor() {
            tracing::warn!(
                min = %options.service_min_tls,
                "minimum service TLS version is below TLS 1.2; TLS12 is enforced"
            );
        }
        let provider = super::ciphers::provider_with(options.client_cipher_suites.as_deref());
        let service_provider =
            super::ciphers::provider_with(options.service_cipher_suites.as_deref());
        let system = if options.system_roots {
            SystemRoots::load()
        } else {
            SystemRoots::default()
        };
        let load_opts = LoadOptions {
            folders: options.ca_dirs.clone(),
            max_file_bytes: options.max_file_bytes,
        };
        let first = anchors::load(&system, &load_opts, 1)?;
        let (generation_tx, _) = tokio::sync::watch::channel(1);
        static FACTORIES: AtomicU64 = AtomicU64::new(0);
        let inner = Arc::new(Inner {
            id: FACTORIES.fetch_add(1, Ordering::Relaxed),
            options,
            provider,
            service_provider,
            system,
            anchors: ArcSwap::from_pointee(first),
            cache: SharedPool::default(),
            unsafe_triggers: Mutex::new(HashSet::new()),
            logged_files: Mutex::new(HashSet::new()),
            last_reload_error: Mutex::new(None),
            counters: Counters::default(),
            generation_tx,
            reload_lock: Mutex::new(()),
            watch: OnceLock::new(),
        });
        let factory = TrustFactory { inner };
        factory.log_anchors(&factory.anchors(), true);
        if factory.inner.options.watch {
            let weak = Arc::downgrade(&factory.inner);
            let watch = FileWatch::spawn(
                "ca-folders",
                factory.inner.options.ca_dirs.clone(),
                WatchOptions {
                    quiet: Duration::from_millis(50),
                    rescan: factory.inner.options.rescan_interval,
                },
                move || {
                    if let Some(inner) = weak.upgrade() {
                        // Errors are logged, counted and kept by `reload`; the last good
                        // anchors stay.
                        let _ = inner.reload();
                    }
                },
            )
            .map_err(TrustError::Watch)?;
            let _ = factory.inner.watch.set(watch);
        }
        Ok(factory)
    }

    /// The options this factory was made with.
    pub fn options(&self) -> &TrustOptions {
        &self.inner.options
    }

    /// The current anchors.
    #[must_use]
    pub fn anchors(&self) -> Arc<Anchors> {
        self.inner.anchors.load_full()
    }

    /// A receiver that sees the anchors generation change after each reload.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.generation_tx.subscribe()
    }

    /// The crypto provider every configuration uses.
    #[must_use]
    pub fn crypto_provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.inner.provider)
    }

    /// Counters and state.
    #[must_use]
    pub fn stats(&self) -> TrustStats {
        let c = &self.inner.counters;
        let anchors = self.anchors();
        TrustStats {
            unsafe_ssl_triggers: self
                .inner
                .unsafe_triggers
                .lock()
                .map(|s| s.len())
                .unwrap_or(0),
            unsafe_ssl_uses: c.unsafe_uses.load(Ordering::Relaxed),
            unsafe_ssl_refused: c.unsafe_refused.load(Ordering::Relaxed),
            reloads: c.reloads.load(Ordering::Relaxed),
            failed_reloads: c.failed_reloads.load(Ordering::Relaxed),
            last_reload_error: self
                .inner
                .last_reload_error
                .lock()
                .ok()
                .and_then(|e| e.clone()),
            rejected_files: anchors
                .problems()
                .filter(|f| f.status == anchors::FileStatus::Rejected)
                .count(),
            contexts_built: c.built.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            generation: anchors.generation(),
            anchors: anchors.len(),
        }
    }

    /// Re-reads the CA folders now. On failure the last good anchors stay in force and
    /// the error is returned (and logged, and counted).
    pub fn reload(&self) -> Result<Arc<Anchors>> {
        self.inner.reload()
    }

    /// The TLS context for a trigger's settings. `trigger` names the trigger in warnings
    /// and errors (for example `default/orders#0 (redis)`).
    ///
    /// Identical settings return the same context while the anchors are unchanged.
    pub fn context(&self, settings: &TlsSettings, trigger: &str) -> Result<TlsContext> {
        let unsafe_ssl = settings.unsafe_ssl();
        if unsafe_ssl {
            self.note_unsafe(settings, trigger)?;
        }
        let anchors = self.inner.anchors.load();
        let key = CacheKey {
            settings: settings.clone(),
            stamps: file_stamps(settings),
            generation: anchors.generation(),
        };
        if let Some(inner) = self.inner.cache.get(&key) {
            self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(TlsContext { inner });
        }
        // Built without the cache's lock (it may read files); another thread that built
        // the same context meanwhile wins, and both share its one.
        let ctx = self.build(settings, trigger, Arc::clone(&anchors))?;
        self.inner.counters.built.fetch_add(1, Ordering::Relaxed);
        Ok(TlsContext {
            inner: self.inner.cache.insert_or_existing(key, ctx.inner),
        })
    }

    fn note_unsafe(&self, settings: &TlsSettings, trigger: &str) -> Result<()> {
        if self.inner.options.unsafe_ssl == UnsafeSslPolicy::Forbid {
            self.inner
                .counters
                .unsafe_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(TrustError::UnsafeSslForbidden {
                trigger: trigger.to_string(),
            });
        }
        self.inner
            .counters
            .unsafe_uses
            .fetch_add(1, Ordering::Relaxed);
        let first_time = self
            .inner
            .unsafe_triggers
            .lock()
            .map(|mut s| s.insert(trigger.to_string()))
            .unwrap_or(false);
        if first_time {
            tracing::warn!(
                trigger,
                ignored_ca = settings.ca.is_some(),
                "unsafeSsl is deprecated: this trigger connects without verifying the server's certificate; \
                 instead put the server's CA in a CA folder (--ca-dir), set the trigger's `ca` parameter, \
                 or set `serverName` when the certificate names another host"
            );
        }
        Ok(())
    }

    fn build(
        &self,
        settings: &TlsSettings,
        trigger: &str,
        anchors: Arc<Anchors>,
    ) -> Result<TlsContext> {
        let provider = Arc::clone(&self.inner.provider);
        let min_tls = self.inner.options.client_min_tls;
        let unsafe_ssl = settings.unsafe_ssl();

        let trigger_ca = match &settings.ca {
            Some(value) => {
                let (_, bytes) =
                    material::read_source("ca", value, &self.inner.options.file_params)?;
                material::certificates_for("ca", &bytes)?
            }
            None => Vec::new(),
        };
        let identity = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let (_, cert_bytes) =
                    material::read_source("cert", cert, &self.inner.options.file_params)?;
                let chain = material::certificates_for("cert", &cert_bytes)?;
                let (_, key_bytes) =
                    material::read_source("key", key.expose(), &self.inner.options.file_params)?;
                let key = material::private_key(&key_bytes, settings.key_password.as_ref())?;
                Some(Identity { chain, key })
            }
            (Some(_), None) => {
                return Err(TrustError::BadMaterial {
                    parameter: "key",
                    reason: "`cert` is set but `key` is not".into(),
                });
            }
            (None, Some(_)) => {
                return Err(TrustError::BadMaterial {
                    parameter: "cert",
                    reason: "`key` is set but `cert` is not".into(),
                });
            }
            (None, None) => None,
        };
        let server_name = settings
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| TrustError::BadMaterial {
                    parameter: "serverName",
                    reason: format!("{name:?} is not a valid DNS name or IP address"),
                })
            })
            .transpose()?;

        let mut verifier: Arc<dyn ServerCertVerifier> = if unsafe_ssl {
            danger::NoServerVerification::new(Arc::clone(&provider))
        } else {
            // A trigger's `ca` that is not a CA is a pin, as in the CA folders.
            let (issuers, trigger_pins) = anchors::split_pins(trigger_ca.clone());
            let roots = if issuers.is_empty() {
                anchors.root_store()
            } else {
                // The trigger's CA goes into a copy: no other trigger ever trusts it.
                let mut copy = (*anchors.root_store()).clone();
                for cert in &issuers {
                    copy.add(cert.clone())
                        .map_err(|e| TrustError::BadMaterial {
                            parameter: "ca",
                            reason: format!("cannot be a trust anchor: {e}"),
                        })?;
                }
                Arc::new(copy)
            };
            let webpki: Arc<dyn ServerCertVerifier> = if roots.is_empty() {
                Arc::new(verify::NoAnchorsVerifier {
                    provider: Arc::clone(&provider),
                })
            } else {
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider)).build()?
            };
            let pinned: Vec<_> = anchors
                .pinned()
                .iter()
                .cloned()
                .chain(trigger_pins)
                .collect();
            if pinned.is_empty() {
                webpki
            } else {
                Arc::new(verify::PinnedVerifier {
                    inner: webpki,
                    pinned,
                })
            }
        };
        if let (Some(name), false) = (&server_name, unsafe_ssl) {
            verifier = Arc::new(verify::FixedNameVerifier {
                inner: verifier,
                name: name.clone(),
            });
        }

        // The configuration's verifier can move to newer anchors without a new client.
        let following = (!unsafe_ssl).then(|| {
            Arc::new(verify::Following::new(
                Arc::clone(&verifier),
                Arc::clone(&anchors),
            ))
        });
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(min_tls.rustls_versions())?
            .dangerous()
            .with_custom_certificate_verifier(match &following {
                Some(f) => Arc::clone(f) as Arc<dyn ServerCertVerifier>,
                None => Arc::clone(&verifier),
            });
        let config = match &identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| TrustError::BadMaterial {
                    parameter: "key",
                    reason: match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "does not match the certificate in `cert`".into()
                        }
                        other => format!("unusable: {other}"),
                    },
                })?,
            None => builder.with_no_client_auth(),
        };

        let fingerprint = {
            let mut h = Sha256::new();
            h.update(b"trustscale-context-v2");
            h.update(anchors.digest());
            // And the build: a context may follow newer anchors since it was built
            // (`TlsContext::follow`), so one built apart must never be taken for it.
            static BUILDS: AtomicU64 = AtomicU64::new(0);
            h.update(BUILDS.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            for cert in &trigger_ca {
                h.update(b"ca");
                h.update(Sha256::digest(cert.as_ref()));
            }
            if let Some(id) = &identity {
                for cert in &id.chain {
                    h.update(b"cert");
                    h.update(Sha256::digest(cert.as_ref()));
                }
                h.update(b"key");
                h.update(Sha256::digest(id.key.secret_der()));
            }
            h.update(min_tls.effective().to_string().as_bytes());
            h.update([u8::from(unsafe_ssl)]);
            if let Some(name) = &settings.server_name {
                h.update(b"sni");
                h.update(name.as_bytes());
            }
            Fingerprint(h.finalize().into())
        };
        tracing::debug!(trigger, %fingerprint, generation = anchors.generation(), "built a TLS context");
        let generation = anchors.generation();
        Ok(TlsContext {
            inner: Arc::new(ContextInner {
                config: Arc::new(config),
                verifier,
                following,
                fingerprint,
                anchors,
                trigger_ca,
                identity,
                min_tls,
                unsafe_ssl,
                server_name,
                generation,
                tls12_suites: self.inner.options.client_cipher_suites.clone(),
            }),
        })
    }

    /// A server configuration for the internal mutual-TLS service: the given identity,
    /// client certificates REQUIRED and verified against `client_ca` only (never the
    /// system roots), and the service minimum TLS version.
    pub fn server_tls(
        &self,
        identity: ServerIdentity,
        client_ca: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<ServerTls> {
        ServerTls::new(
            Arc::clone(&self.inner.service_provider),
            self.inner.options.service_min_tls,
            identity,
            Some(client_ca),
        )
    }

    /// A server configuration with the given identity that asks no client for a
    /// certificate (an admission webhook: the kube-apiserver calls webhooks without one),
    /// at the service minimum TLS version.
    pub fn server_tls_no_client_auth(&self, identity: ServerIdentity) -> Result<ServerTls> {
        ServerTls::new(
            Arc::clone(&self.inner.service_provider),
            self.inner.options.service_min_tls,
            identity,
            None,
        )
    }

    fn log_anchors(&self, anchors: &Anchors, changed: bool) {
        let mut logged = self
            .inner
            .logged_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for file in anchors.files().iter().filter(|f| f.reason.is_some()) {
            let reason = file.reason.clone().unwrap_or_default();
            if logged.insert((file.path.clone(), reason.clone())) {
                tracing::warn!(target: CA_FILES_LOG_TARGET, path = %file.path.display(), status = ?file.status, %reason, "CA file not (fully) trusted");
            }
        }
        if changed {
            tracing::info!(
                anchors = anchors.len(),
                system = anchors.system_count(),
                custom = anchors.custom_count(),
                generation = anchors.generation(),
                "trust anchors loaded"
            );
        } else {
            tracing::debug!(
                generation = anchors.generation(),
                "CA folders re-read; trust unchanged"
            );
        }
    }
}

impl Inner {
    pub(crate) fn reload(self: &Arc<Self>) -> Result<Arc<Anchors>> {
        let _serial = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.anchors.load_full();
        let load_opts = LoadOptions {
            folders: self.options.ca_dirs.clone(),
            max_file_bytes: self.options.max_file_bytes,
        };
        match anchors::load(&self.system, &load_opts, current.generation() + 1) {
            Ok(mut fresh) => {
                if fresh.digest() == current.digest() {
                    // Same trust: keep the generation so cached contexts stay shared.
                    fresh.generation = current.generation();
                }
                let fresh = Arc::new(fresh);
                let changed = fresh.generation() != current.generation();
                self.anchors.store(Arc::clone(&fresh));
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut e) = self.last_reload_error.lock() {
                    *e = None;
                }
                TrustFactory {
                    inner: Arc::clone(self),
                }
                .log_anchors(&fresh, changed);
                if changed {
                    self.generation_tx.send_replace(fresh.generation());
                }
                Ok(fresh)
            }
            Err(e) => {
                self.counters.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %crate::error::Chain(&e), generation = current.generation(), "reloading the CA folders failed; keeping the last good anchors");
                if let Ok(mut last) = self.last_reload_error.lock() {
                    *last = Some(crate::error::Chain(&e).to_string());
                }
                Err(e)
            }
        }
    }
}

/// The state of the files a trigger's `ca`, `cert` and `key` name (inline PEM has none):
/// size, modification time and inode of each, so that a changed or replaced file is seen.
#[must_use]
pub fn file_stamps(settings: &TlsSettings) -> Vec<FileStamp> {
    let values = [
        settings.ca.as_deref(),
        settings.cert.as_deref(),
        settings.key.as_ref().map(|k| k.expose()),
    ];
    values
        .into_iter()
        .flatten()
        .filter(|v| !material::is_inline(v))
        .map(|path| match std::fs::metadata(path.trim()) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt as _;
                (m.len(), m.modified().ok(), m.ino())
            }
            Err(_) => (u64::MAX, None, 0),
        })
        .collect()
}

/// See [`file_stamps`].
pub type FileStamp = (u64, Option<SystemTime>, u64);
