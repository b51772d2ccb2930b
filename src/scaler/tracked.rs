//! Clients that follow the trust anchors.
//!
//! A scaler's client is built from a [`TlsContext`], and a context from the anchors of
//! its generation. When the CA folders change, the factory publishes a new generation; a
//! [`Tracked`] client notices it at its next use, and either follows it (below) or is
//! replaced by one built from a new context, so new connections use the new anchors. A
//! replaced client is dropped with its last holder (a poll under way keeps it until it
//! ends), which closes its connections.
//!
//! Triggers whose settings are equal and that were given the same (pooled) client share
//! one slot: the first of them to use it after a change rebuilds it for all, and the old
//! client goes at once instead of when the last of them next polls. Otherwise, with the
//! folder changing faster than the polling interval, every generation of the interval
//! would stay alive in the triggers that have not polled since (a Kafka client is a
//! handful of threads and sockets).
//!
//! A client that verifies through the context's rustls configuration (made with
//! [`Tracked::new_rustls`]) is not rebuilt for a change that cannot alter a verification
//! it already made: its context follows the new anchors (see [`TlsContext::follow`]), so
//! the next handshake uses them while the connections it holds stay. Only the removal of
//! an anchor that could have ended a chain it accepted makes a new client, which closes
//! the connections verified through that anchor. A CA folder that keeps changing with CAs
//! no server of the trigger uses costs such a client nothing.
//!
//! A context that followed is filed for its settings, so that triggers made later (a
//! changed ScaledObject) are given it, and with it the same pooled client, instead of a
//! new context and a client of their own.
//!
//! A client on another TLS stack that can be given new anchors while it runs (an OpenSSL
//! client reading a hashed CA directory, which looks an issuer up only when a chain needs
//! it) follows the same way when made with [`Tracked::new_following`]. Its verifications do
//! not go through the context, so its [`Follower`] makes the chains its servers present
//! known to the context by handshakes through it ([`TlsContext::witness`]), and tells
//! whether they are known ([`Witnessed`]; while it cannot tell yet, the client is kept).
//! Then, if the context can follow, the client is given the new anchors; if not, if its
//! servers' chains are not known, or if it cannot take the change while it runs, it is
//! rebuilt, as below.
//!
//! Other clients (librdkafka's without a CA directory) are rebuilt at every
//! change, but while the anchors keep changing at most once every [`REBUILD_GAP`] per
//! slot: the first change after a quiet spell applies at once, a later one at the first
//! use once the gap has passed. So while the folders keep changing, such a client may
//! trust a removed CA for up to that gap longer. Rebuilds happen only at a use, only when the
//! generation differs, and the factory only moves the generation when the trust really
//! changed (its folder watch compares at most once a second while files keep changing).

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{BuildContext, ScalerError};
use crate::pool::SharedPool;
use crate::trust::{TlsContext, TlsSettings, TrustFactory};

/// Makes a client for a context (`None`: plaintext). Pooled clients are looked up by the
/// context's fingerprint, so triggers with the same settings share the new one too.
pub type MakeClient<C> =
    Box<dyn Fn(Option<&TlsContext>) -> Result<Arc<C>, ScalerError> + Send + Sync>;

struct State<C> {
    generation: u64,
    /// The trigger's own `ca`, `cert` and `key` files as they were when the client was
    /// made (empty when they are inline or unset).
    stamps: Vec<crate::trust::FileStamp>,
    client: Arc<C>,
    tls: Option<TlsContext>,
}

/// Whether the chains a client on another TLS stack verifies are known to its context
/// (see [`Follower::witnessed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Witnessed {
    /// Every server the client talks to was seen through the context since the anchors
    /// reached the generation asked about.
    Yes,
    /// A handshake that will tell is under way: the client is kept as it is meanwhile.
    Pending,
    /// Not known (a server could not be reached, or its chain was refused): the client is
    /// rebuilt.
    No,
}

/// How a client that verifies on another TLS stack follows new anchors without being
/// rebuilt (see [`Tracked::new_following`]).
pub struct Follower<C> {
    /// Whether the chains the client's servers present were seen through `tls` (the
    /// client's context) since the anchors reached `generation`; when they were not, it
    /// starts the handshakes ([`TlsContext::witness`]) and answers [`Witnessed::Pending`].
    #[allow(clippy::type_complexity)]
    pub witnessed: Box<dyn Fn(&C, &TlsContext, u64) -> Witnessed + Send + Sync>,
    /// Gives the client the anchors `tls` verifies against now
    /// ([`TlsContext::verifying_trust_pem`]), once it followed them. `Ok(false)`: the
    /// client cannot take that change while it runs (it is rebuilt); an error is logged
    /// and rebuilds it too.
    #[allow(clippy::type_complexity)]
    pub take: Box<dyn Fn(&C, &TlsContext) -> Result<bool, ScalerError> + Send + Sync>,
}

/// While the anchors keep changing, a client that cannot follow them is rebuilt at most
/// once in this time (per slot).
pub const REBUILD_GAP: Duration = Duration::from_secs(10);

/// The time base of [`Slot::rebuilt_at`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds from an hour before [`EPOCH`]: never 0 (which means "never"), and a
/// time a gap ago always exists.
fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(3_600_000)
}

/// The state that triggers with equal settings and the same client share.
struct Slot<C> {
    settings: TlsSettings,
    state: ArcSwap<State<C>>,
    rebuilding: Mutex<()>,
    /// The client verifies through its context's rustls configuration, so the context
    /// can follow new anchors without a new client.
    follows: bool,
    /// When the client was last rebuilt for new anchors ([`now_ms`]); 0: never.
    rebuilt_at: AtomicU64,
    /// The generation its [`Follower`] last could not follow (it waits for the gap).
    declined: AtomicU64,
}

/// Where a trigger finds the slot of its client: the client's type and address, the
/// factory and the settings. A slot is filed again under its new client when it is
/// rebuilt, so an address is only ever looked up while its client lives.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    ty: TypeId,
    client: usize,
    factory: u64,
    settings: TlsSettings,
}

/// Every slot, by key; an entry dies with its slot.
static SLOTS: LazyLock<SharedPool<SlotKey, dyn Any + Send + Sync>> =
    LazyLock::new(SharedPool::default);

/// Where triggers made later find a context that followed newer anchors: the factory,
/// the settings and their files' stamps.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FollowKey {
    factory: u64,
    settings: TlsSettings,
    stamps: Vec<crate::trust::FileStamp>,
}

/// The last context that followed, for each key; an entry dies with its context.
static FOLLOWED: LazyLock<SharedPool<FollowKey, crate::trust::ContextInner>> =
    LazyLock::new(SharedPool::default);

fn follow_key(
    trust: &TrustFactory,
    settings: &TlsSettings,
    stamps: &[crate::trust::FileStamp],
) -> FollowKey {
    FollowKey {
        factory: trust.inner.id,
        settings: settings.clone(),
        stamps: stamps.to_vec(),
    }
}

fn slot_key<C: 'static>(trust: &TrustFactory, settings: &TlsSettings, client: &Arc<C>) -> SlotKey {
    SlotKey {
        ty: TypeId::of::<C>(),
        client: Arc::as_ptr(client) as usize,
        factory: trust.inner.id,
        settings: settings.clone(),
    }
}

/// The generation a client made from `tls` trusts: the one its rustls configuration
/// verifies against for a client that follows, else the one the context was built from
/// (what its PEM forms hold).
fn generation_of(tls: &TlsContext, follows: bool) -> u64 {
    if follows {
        tls.verifying_generation()
    } else {
        tls.generation()
    }
}

/// A client that is rebuilt when the anchors it trusts change.
pub struct Tracked<C> {
    trust: TrustFactory,
    trigger: String,
    slot: Arc<Slot<C>>,
    make: MakeClient<C>,
    follower: Option<Follower<C>>,
}

impl<C> std::fmt::Debug for Tracked<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("trigger", &self.trigger)
            .field("generation", &self.slot.state.load().generation)
            .finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> Tracked<C> {
    /// The client for `tls` (the context the trigger's `settings` gave; `None` for a
    /// plaintext source, which is never rebuilt), made now by `make`. It is rebuilt at
    /// every change of the anchors (at most once every [`REBUILD_GAP`] while they keep
    /// changing): for clients that take the trust in another form than the context's
    /// rustls configuration (PEM, files).
    pub fn new(
        ctx: &BuildContext,
        settings: &TlsSettings,
        tls: Option<TlsContext>,
        trigger: &str,
        make: MakeClient<C>,
    ) -> Result<Self, ScalerError> {
        Self::with(ctx, settings, tls, trigger, make, false, None)
    }

    /// As [`Tracked::new`], for a client on another TLS stack that can be given new
    /// anchors while it runs: `follower` tells whether its servers' chains are known to
    /// its context and gives it the anchors; it is rebuilt only when an anchor those
    /// chains could use was removed, or when they cannot be seen.
    pub fn new_following(
        ctx: &BuildContext,
        settings: &TlsSettings,
        tls: Option<TlsContext>,
        trigger: &str,
        make: MakeClient<C>,
        follower: Follower<C>,
    ) -> Result<Self, ScalerError> {
        Self::with(ctx, settings, tls, trigger, make, false, Some(follower))
    }

    /// As [`Tracked::new`], for a client that verifies servers only through the context's
    /// rustls configuration ([`TlsContext::rustls_config`] or [`TlsContext::connect`]):
    /// a change of the anchors reaches its next handshake without a new client, and a new
    /// client is made only when an anchor its servers' chains could use was removed.
    pub fn new_rustls(
        ctx: &BuildContext,
        settings: &TlsSettings,
        tls: Option<TlsContext>,
        trigger: &str,
        make: MakeClient<C>,
    ) -> Result<Self, ScalerError> {
        Self::with(ctx, settings, tls, trigger, make, true, None)
    }

    fn with(
        ctx: &BuildContext,
        settings: &TlsSettings,
        tls: Option<TlsContext>,
        trigger: &str,
        make: MakeClient<C>,
        follows: bool,
        follower: Option<Follower<C>>,
    ) -> Result<Self, ScalerError> {
        let stamps = crate::trust::file_stamps(settings);
        // A context of these settings that follows the anchors in force now, if there is
        // one: its client is shared instead of a new one made for this trigger.
        let tls = match tls {
            Some(fresh) if follows && !fresh.is_unsafe() => Some(
                FOLLOWED
                    .get(&follow_key(&ctx.trust, settings, &stamps))
                    .map(|inner| TlsContext { inner })
                    .filter(|c| c.verifying_generation() == fresh.verifying_generation())
                    .unwrap_or(fresh),
            ),
            other => other,
        };
        // Read before the client is made: a client that was given newer anchors meanwhile
        // is then found stale once more, never the other way round.
        let generation = tls
            .as_ref()
            .map_or(0, |c| generation_of(c, follows || follower.is_some()));
        let client = make(tls.as_ref())?;
        let fresh = |client: Arc<C>| {
            Arc::new(Slot {
                settings: settings.clone(),
                state: ArcSwap::from_pointee(State {
                    generation,
                    stamps: stamps.clone(),
                    client,
                    tls: tls.clone(),
                }),
                rebuilding: Mutex::new(()),
                follows,
                rebuilt_at: AtomicU64::new(0),
                declined: AtomicU64::new(0),
            })
        };
        let slot = if tls.is_some() {
            let key = slot_key(&ctx.trust, settings, &client);
            let mine = fresh(Arc::clone(&client));
            let erased: Arc<dyn Any + Send + Sync> = mine.clone();
            // The live slot of this client, else ours (filed in place of one that holds
            // another client now).
            match SLOTS
                .insert_or_existing(key.clone(), erased.clone())
                .downcast::<Slot<C>>()
                .ok()
                .filter(|slot| Arc::ptr_eq(&slot.state.load().client, &client))
            {
                Some(slot) => slot,
                None => {
                    SLOTS.put(key, &erased);
                    mine
                }
            }
        } else {
            fresh(client)
        };
        Ok(Tracked {
            trust: ctx.trust.clone(),
            trigger: trigger.to_string(),
            slot,
            make,
            follower,
        })
    }

    /// The client to use now (see [`Tracked::current`]), without its context.
    pub fn client(&self) -> Result<Arc<C>, ScalerError> {
        {
            let state = self.slot.state.load();
            if !self.is_stale(&state) {
                return Ok(Arc::clone(&state.client));
            }
        }
        self.current().map(|(client, _)| client)
    }

    fn is_stale(&self, s: &State<C>) -> bool {
        match &s.tls {
            // Plaintext: nothing to follow.
            None => false,
            // The trigger's own files changed (a few stats, and only when it names files).
            Some(_)
                if !s.stamps.is_empty()
                    && crate::trust::file_stamps(&self.slot.settings) != s.stamps =>
            {
                true
            }
            // Verification off: the anchors play no part.
            Some(tls) if tls.is_unsafe() => false,
            Some(_) => {
                let now = self.trust.anchors().generation();
                s.generation != now
                    && (self.slot.follows
                        || (self.follower.is_some()
                            && self.slot.declined.load(Ordering::Relaxed) != now)
                        || self.gap_passed())
            }
        }
    }

    /// Whether a client that cannot follow the anchors may be rebuilt for them again.
    fn gap_passed(&self) -> bool {
        let at = self.slot.rebuilt_at.load(Ordering::Relaxed);
        at == 0 || now_ms().saturating_sub(at) >= REBUILD_GAP.as_millis() as u64
    }

    /// The client to use now, with its context: the same one while the anchors are
    /// unchanged, else a new one built from a new context.
    pub fn current(&self) -> Result<(Arc<C>, Option<TlsContext>), ScalerError> {
        let slot = &*self.slot;
        let state = slot.state.load();
        let stale = |s: &State<C>| self.is_stale(s);
        if !stale(&state) {
            return Ok((Arc::clone(&state.client), state.tls.clone()));
        }
        let _one = slot
            .rebuilding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = slot.state.load();
        if !stale(&state) {
            return Ok((Arc::clone(&state.client), state.tls.clone()));
        }
        let stamps = crate::trust::file_stamps(&slot.settings);
        let tls = self
            .trust
            .context(&slot.settings, &self.trigger)
            .map_err(|e| ScalerError::from_trust(&self.trigger, e))?;
        // Only the anchors changed: a client that verifies through its context keeps its
        // connections when the change cannot alter their verification.
        if slot.follows
            && stamps == state.stamps
            && let Some(mine) = &state.tls
            && let Some(generation) = mine.follow(&tls)
        {
            tracing::debug!(trigger = %self.trigger, generation, "client follows the new trust anchors");
            FOLLOWED.put(
                follow_key(&self.trust, &slot.settings, &stamps),
                &mine.inner,
            );
            slot.state.store(Arc::new(State {
                generation,
                stamps,
                client: Arc::clone(&state.client),
                tls: Some(mine.clone()),
            }));
            return Ok((Arc::clone(&state.client), Some(mine.clone())));
        }
        // A client on another TLS stack: the same, once its servers' chains are known.
        if let Some(follower) = &self.follower
            && stamps == state.stamps
            && let Some(mine) = &state.tls
        {
            let now = tls.verifying_generation();
            match (follower.witnessed)(&state.client, mine, now) {
                Witnessed::Pending => {
                    return Ok((Arc::clone(&state.client), Some(mine.clone())));
                }
                Witnessed::Yes => {
                    if let Some(generation) = mine.follow(&tls) {
                        match (follower.take)(&state.client, mine) {
                            Ok(true) => {
                                tracing::debug!(trigger = %self.trigger, generation, "client follows the new trust anchors");
                                slot.state.store(Arc::new(State {
                                    generation,
                                    stamps,
                                    client: Arc::clone(&state.client),
                                    tls: Some(mine.clone()),
                                }));
                                return Ok((Arc::clone(&state.client), Some(mine.clone())));
                            }
                            // Its context moved, its client did not: rebuilt now.
                            Ok(false) => {
                                tracing::debug!(trigger = %self.trigger, "the client cannot take the new trust anchors while it runs; rebuilding it")
                            }
                            Err(e) => {
                                tracing::warn!(trigger = %self.trigger, error = %e, "cannot give the client the new trust anchors; rebuilding it")
                            }
                        }
                    } else {
                        slot.declined.store(now, Ordering::Relaxed);
                    }
                }
                Witnessed::No => slot.declined.store(now, Ordering::Relaxed),
            }
            if slot.declined.load(Ordering::Relaxed) == now && !self.gap_passed() {
                return Ok((Arc::clone(&state.client), Some(mine.clone())));
            }
        }
        let generation = generation_of(&tls, slot.follows || self.follower.is_some());
        let client = (self.make)(Some(&tls))?;
        if generation != state.generation {
            slot.rebuilt_at.store(now_ms(), Ordering::Relaxed);
        }
        tracing::debug!(trigger = %self.trigger, generation, "client rebuilt for new trust anchors or changed trigger files");
        // Filed under the new client (unless a live slot of it is there already), no
        // longer under the old one.
        let erased: Arc<dyn Any + Send + Sync> = self.slot.clone();
        SLOTS.remove_if(
            &slot_key(&self.trust, &slot.settings, &state.client),
            &erased,
        );
        SLOTS.insert_or_existing(slot_key(&self.trust, &slot.settings, &client), erased);
        slot.state.store(Arc::new(State {
            generation,
            stamps,
            client: Arc::clone(&client),
            tls: Some(tls.clone()),
        }));
        Ok((client, Some(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{Fingerprint, TrustOptions};

    /// A client as the scalers pool them: one per context fingerprint.
    struct Client;

    /// A new, empty folder under the temporary directory.
    fn temp_dir(prefix: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A factory over `dir` alone (no system roots, no watch), and a build context of it.
    fn factory_over(dir: &std::path::Path) -> (TrustFactory, BuildContext) {
        let trust = TrustFactory::new(
            TrustOptions::default()
                .ca_dirs([dir])
                .watch(false)
                .system_roots(false),
        )
        .unwrap();
        let ctx = BuildContext {
            trust: trust.clone(),
        };
        (trust, ctx)
    }

    fn ca(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_rebuild_retires_the_old_client_for_every_trigger_that_shares_it() {
        let dir = temp_dir("trustscale-tracked");
        std::fs::write(dir.join("a.crt"), ca("a")).unwrap();
        let (trust, ctx) = factory_over(&dir);
        let pool: Arc<SharedPool<Fingerprint, Client>> = Arc::default();
        let tracked = |settings: &TlsSettings, name: &str| {
            let pool = Arc::clone(&pool);
            let make: MakeClient<Client> = Box::new(move |tls: Option<&TlsContext>| {
                Ok(pool.get_or_insert_with(&tls.unwrap().fingerprint(), || Client))
            });
            let tls = trust.context(settings, name).unwrap();
            Tracked::new(&ctx, settings, Some(tls), name, make).unwrap()
        };
        let plain = TlsSettings::default();
        let named = TlsSettings {
            server_name: Some("other.example".into()),
            ..TlsSettings::default()
        };
        let (a, b, c) = (
            tracked(&plain, "a"),
            tracked(&plain, "b"),
            tracked(&named, "c"),
        );
        let old = a.client().unwrap();
        assert!(Arc::ptr_eq(&old, &b.client().unwrap()));
        let (old_shared, old_own) = (Arc::downgrade(&old), Arc::downgrade(&c.client().unwrap()));
        drop(old);

        std::fs::write(dir.join("b.crt"), ca("b")).unwrap();
        trust.reload().unwrap();
        let new = a.client().unwrap();
        assert!(
            old_shared.upgrade().is_none(),
            "b has not polled, yet the old client is gone"
        );
        assert!(
            Arc::ptr_eq(&new, &b.client().unwrap()),
            "b uses a's rebuild"
        );
        // Control: other settings are another slot, kept until their own trigger polls.
        assert!(old_own.upgrade().is_some());
        let own = c.client().unwrap();
        assert!(!Arc::ptr_eq(&own, &new));
        assert!(old_own.upgrade().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A CA and a server certificate for `localhost` it signed, as PEM and as a rustls
    /// server configuration.
    fn ca_and_server(name: &str) -> (String, Arc<rustls::ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&p, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        (ca.pem(), Arc::new(config))
    }

    /// A TLS server on loopback that accepts with `config` for as long as the runtime
    /// runs; returns its port.
    async fn serve(config: Arc<rustls::ServerConfig>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, b"ok").await;
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    }
                });
            }
        });
        port
    }

    /// Whether a handshake to `port` through `ctx`'s rustls configuration succeeds.
    async fn handshake(ctx: &TlsContext, port: u16) -> bool {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        ctx.connect("localhost", tcp).await.is_ok()
    }

    #[tokio::test]
    async fn a_rustls_client_follows_anchor_changes_its_servers_do_not_use_and_is_rebuilt_when_theirs_goes()
     {
        let dir = temp_dir("trustscale-follow");
        let (used_ca, used_server) = ca_and_server("used");
        let (later_ca, later_server) = ca_and_server("added later");
        std::fs::write(dir.join("used.crt"), &used_ca).unwrap();
        let (trust, ctx) = factory_over(&dir);
        // Pooled by the context's fingerprint, as the scalers pool their clients.
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pool: Arc<SharedPool<Fingerprint, Client>> = Arc::default();
        let make = || -> MakeClient<Client> {
            let (pool, counter) = (Arc::clone(&pool), Arc::clone(&made));
            Box::new(move |tls: Option<&TlsContext>| {
                Ok(pool.get_or_insert_with(&tls.unwrap().fingerprint(), || {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Client
                }))
            })
        };
        let settings = TlsSettings::default();
        let tls = trust.context(&settings, "t").unwrap();
        let tracked = Tracked::new_rustls(&ctx, &settings, Some(tls), "t", make()).unwrap();
        let (used_port, later_port) = (serve(used_server).await, serve(later_server).await);

        let (first, ctx0) = tracked.current().unwrap();
        let ctx0 = ctx0.unwrap();
        assert!(handshake(&ctx0, used_port).await);
        assert!(
            !handshake(&ctx0, later_port).await,
            "control: not trusted yet"
        );

        // A CA no server of this client uses comes, is replaced, goes: the same client,
        // whose next handshakes trust the new CA.
        for (file, pem) in [("other.crt", ca("other")), ("other.crt", ca("other 2"))] {
            std::fs::write(dir.join(file), pem).unwrap();
            trust.reload().unwrap();
            let (client, now) = tracked.current().unwrap();
            assert!(Arc::ptr_eq(&client, &first));
            assert_eq!(
                now.unwrap().verifying_generation(),
                trust.anchors().generation()
            );
        }
        // A trigger made now is given the context that followed, and shares its client.
        let fresh = trust.context(&settings, "u").unwrap();
        let later = Tracked::new_rustls(&ctx, &settings, Some(fresh), "u", make()).unwrap();
        assert!(Arc::ptr_eq(&later.client().unwrap(), &first));
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(later);
        std::fs::write(dir.join("later.crt"), &later_ca).unwrap();
        trust.reload().unwrap();
        let (client, now) = tracked.current().unwrap();
        assert!(
            Arc::ptr_eq(&client, &first),
            "an added CA needs no new client"
        );
        assert!(
            handshake(&now.unwrap(), later_port).await,
            "the kept client's next handshake trusts the added CA"
        );
        std::fs::remove_file(dir.join("other.crt")).unwrap();
        trust.reload().unwrap();
        assert!(Arc::ptr_eq(&tracked.client().unwrap(), &first));
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);

        // The CA its server chains to goes: a new client, which no longer trusts it.
        std::fs::remove_file(dir.join("used.crt")).unwrap();
        trust.reload().unwrap();
        let (client, now) = tracked.current().unwrap();
        assert!(
            !Arc::ptr_eq(&client, &first),
            "a removed CA in use: rebuilt"
        );
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
        let now = now.unwrap();
        assert!(!handshake(&now, used_port).await);
        assert!(handshake(&now, later_port).await);

        // The CA back, used, removed again: the anchors then read as they did when the
        // current client was made, yet it follows the CA since, so it is not taken back
        // from the pool.
        std::fs::write(dir.join("used.crt"), &used_ca).unwrap();
        trust.reload().unwrap();
        let (back, now) = tracked.current().unwrap();
        assert!(Arc::ptr_eq(&back, &client));
        assert!(handshake(&now.unwrap(), used_port).await);
        std::fs::remove_file(dir.join("used.crt")).unwrap();
        trust.reload().unwrap();
        let (again, now) = tracked.current().unwrap();
        assert!(
            !Arc::ptr_eq(&again, &client),
            "the followed client is not reused"
        );
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(!handshake(&now.unwrap(), used_port).await);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_client_that_cannot_follow_is_rebuilt_at_once_then_at_most_once_per_gap() {
        let dir = temp_dir("trustscale-gap");
        std::fs::write(dir.join("a.crt"), ca("a")).unwrap();
        let (trust, ctx) = factory_over(&dir);
        let make: MakeClient<Client> = Box::new(|_| Ok(Arc::new(Client)));
        let settings = TlsSettings::default();
        let tls = trust.context(&settings, "k").unwrap();
        let tracked = Tracked::new(&ctx, &settings, Some(tls), "k", make).unwrap();
        let first = tracked.client().unwrap();
        std::fs::write(dir.join("b.crt"), ca("b")).unwrap();
        trust.reload().unwrap();
        let second = tracked.client().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the first change applies at once"
        );
        std::fs::write(dir.join("c.crt"), ca("c")).unwrap();
        trust.reload().unwrap();
        assert!(
            Arc::ptr_eq(&second, &tracked.client().unwrap()),
            "within the gap: kept"
        );
        // The gap, passed (as if the rebuild had been that long ago).
        tracked
            .slot
            .rebuilt_at
            .store(now_ms() - REBUILD_GAP.as_millis() as u64, Ordering::Relaxed);
        let (third, now) = tracked.current().unwrap();
        assert!(!Arc::ptr_eq(&second, &third));
        assert_eq!(now.unwrap().generation(), trust.anchors().generation());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_follower_keeps_its_client_while_pending_takes_the_anchors_when_seen_and_is_rebuilt_when_not()
     {
        use std::sync::atomic::AtomicU8;
        let dir = temp_dir("trustscale-follower");
        std::fs::write(dir.join("a.crt"), ca("a")).unwrap();
        let (trust, ctx) = factory_over(&dir);
        let make: MakeClient<Client> = Box::new(|_| Ok(Arc::new(Client)));
        // 0: pending, 1: seen, 2: not seen.
        let answer = Arc::new(AtomicU8::new(0));
        let taken = Arc::new(Mutex::new(Vec::<String>::new()));
        let refused = ca("refused");
        let refused_body = refused.lines().nth(1).unwrap().to_string();
        let follower = {
            let (answer, taken) = (Arc::clone(&answer), Arc::clone(&taken));
            Follower {
                witnessed: Box::new(move |_: &Client, _: &TlsContext, _: u64| {
                    match answer.load(Ordering::Relaxed) {
                        0 => Witnessed::Pending,
                        1 => Witnessed::Yes,
                        _ => Witnessed::No,
                    }
                }),
                take: Box::new(move |_: &Client, tls: &TlsContext| {
                    let pem = tls.verifying_trust_pem();
                    // A CA named "refused" cannot be taken in place.
                    let can = !pem.contains(&refused_body);
                    taken.lock().unwrap().push(pem);
                    Ok(can)
                }),
            }
        };
        let settings = TlsSettings::default();
        let tls = trust.context(&settings, "k").unwrap();
        let tracked =
            Tracked::new_following(&ctx, &settings, Some(tls), "k", make, follower).unwrap();
        let first = tracked.client().unwrap();
        let b = ca("b");
        std::fs::write(dir.join("b.crt"), &b).unwrap();
        trust.reload().unwrap();
        assert!(
            Arc::ptr_eq(&first, &tracked.client().unwrap()),
            "pending: kept"
        );
        assert!(taken.lock().unwrap().is_empty());
        answer.store(1, Ordering::Relaxed);
        let (client, tls) = tracked.current().unwrap();
        assert!(
            Arc::ptr_eq(&first, &client),
            "seen, nothing in use removed: kept"
        );
        assert_eq!(
            tls.unwrap().verifying_generation(),
            trust.anchors().generation()
        );
        let taken_pem = taken.lock().unwrap().pop().expect("given the new anchors");
        assert!(
            taken_pem.contains(b.lines().nth(1).unwrap()),
            "with the added CA"
        );
        assert!(
            Arc::ptr_eq(&first, &tracked.client().unwrap()),
            "and no longer stale"
        );
        // Seen, but a change the client cannot take while it runs: rebuilt at once.
        std::fs::write(dir.join("r.crt"), &refused).unwrap();
        trust.reload().unwrap();
        let (client, tls) = tracked.current().unwrap();
        assert!(!Arc::ptr_eq(&first, &client), "cannot take it: rebuilt");
        assert_eq!(tls.unwrap().generation(), trust.anchors().generation());
        let first = client;
        taken.lock().unwrap().clear();
        // As if that rebuild had been a gap ago.
        tracked.slot.rebuilt_at.store(0, Ordering::Relaxed);
        // Not seen: rebuilt (the first rebuild at once), then kept within the gap.
        std::fs::write(dir.join("c.crt"), ca("c")).unwrap();
        trust.reload().unwrap();
        answer.store(2, Ordering::Relaxed);
        let second = tracked.client().unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "not seen: rebuilt");
        std::fs::write(dir.join("d.crt"), ca("d")).unwrap();
        trust.reload().unwrap();
        assert!(
            Arc::ptr_eq(&second, &tracked.client().unwrap()),
            "within the gap: kept"
        );
        assert!(
            taken.lock().unwrap().is_empty(),
            "nothing given when not seen"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
