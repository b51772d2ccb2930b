//! Clients that follow the trust anchors.
//!
//! A scaler's client is built from a [`TlsContext`], and a context from the anchors of
//! its generation. When the CA folders change, the factory publishes a new generation; a
//! [`Tracked`] client notices it at its next use and is replaced by one built from a new
//! context, so new connections use the new anchors. The old client is dropped with its
//! last holder (a poll under way keeps it until it ends), which closes its connections.
//!
//! Triggers whose settings are equal and that were given the same (pooled) client share
//! one slot: the first of them to use it after a change rebuilds it for all, and the old
//! client goes at once instead of when the last of them next polls. Otherwise, with the
//! folder changing faster than the polling interval, every generation of the interval
//! would stay alive in the triggers that have not polled since (a Kafka client is a
//! handful of threads and sockets).
//!
//! Rebuilds are coalesced by construction: one happens only at a use, only when the
//! generation differs, and the factory only moves the generation when the trust really
//! changed (its folder watch compares at most once a second while files keep changing).

use std::any::{Any, TypeId};
use std::sync::{Arc, LazyLock, Mutex};

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

/// The state that triggers with equal settings and the same client share.
struct Slot<C> {
    settings: TlsSettings,
    state: ArcSwap<State<C>>,
    rebuilding: Mutex<()>,
}

/// Where a trigger finds the slot of its client: the client's type and address, the
/// factory and the settings. A slot is filed again under its new client when it is
/// rebuilt, so an address is only ever looked up while its client lives.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    ty: TypeId,
    client: usize,
    factory: usize,
    settings: TlsSettings,
}

/// Every slot, by key; an entry dies with its slot.
static SLOTS: LazyLock<SharedPool<SlotKey, dyn Any + Send + Sync>> =
    LazyLock::new(SharedPool::default);

fn slot_key<C: 'static>(trust: &TrustFactory, settings: &TlsSettings, client: &Arc<C>) -> SlotKey {
    SlotKey {
        ty: TypeId::of::<C>(),
        client: Arc::as_ptr(client) as usize,
        factory: Arc::as_ptr(&trust.inner) as usize,
        settings: settings.clone(),
    }
}

/// A client that is rebuilt when the anchors it trusts change.
pub struct Tracked<C> {
    trust: TrustFactory,
    trigger: String,
    slot: Arc<Slot<C>>,
    make: MakeClient<C>,
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
    /// plaintext source, which is never rebuilt), made now by `make`.
    pub fn new(
        ctx: &BuildContext,
        settings: &TlsSettings,
        tls: Option<TlsContext>,
        trigger: &str,
        make: MakeClient<C>,
    ) -> Result<Self, ScalerError> {
        let stamps = crate::trust::file_stamps(settings);
        let client = make(tls.as_ref())?;
        let generation = tls.as_ref().map_or(0, TlsContext::generation);
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
            Some(_) => s.generation != self.trust.anchors().generation(),
        }
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
        let client = (self.make)(Some(&tls))?;
        tracing::debug!(trigger = %self.trigger, generation = tls.generation(), "client rebuilt for new trust anchors or changed trigger files");
        // Filed under the new client (unless a live slot of it is there already), no
        // longer under the old one.
        let erased: Arc<dyn Any + Send + Sync> = self.slot.clone();
        SLOTS.remove_if(
            &slot_key(&self.trust, &slot.settings, &state.client),
            &erased,
        );
        SLOTS.insert_or_existing(slot_key(&self.trust, &slot.settings, &client), erased);
        slot.state.store(Arc::new(State {
            generation: tls.generation(),
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

    fn ca(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_rebuild_retires_the_old_client_for_every_trigger_that_shares_it() {
        let dir = std::env::temp_dir().join(format!(
            "trustscale-tracked-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.crt"), ca("a")).unwrap();
        let trust = TrustFactory::new(
            TrustOptions::default()
                .ca_dirs([&dir])
                .watch(false)
                .system_roots(false),
        )
        .unwrap();
        let ctx = BuildContext {
            trust: trust.clone(),
        };
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
}
