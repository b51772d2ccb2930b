//! Clients that follow the trust anchors.
//!
//! A scaler's client is built from a [`TlsContext`], and a context from the anchors of
//! its generation. When the CA folders change, the factory publishes a new generation; a
//! [`Tracked`] client notices it at its next use and is replaced by one built from a new
//! context, so new connections use the new anchors. The old client is dropped with its
//! last holder (a poll under way keeps it until it ends), which closes its connections.
//!
//! Rebuilds are coalesced by construction: one happens only at a use, only when the
//! generation differs, and the factory only moves the generation when the trust really
//! changed (its folder watch compares at most once a second while files keep changing).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{BuildContext, ScalerError};
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

/// A client that is rebuilt when the anchors it trusts change.
pub struct Tracked<C> {
    trust: TrustFactory,
    settings: TlsSettings,
    trigger: String,
    state: ArcSwap<State<C>>,
    make: MakeClient<C>,
    rebuilding: Mutex<()>,
}

impl<C> std::fmt::Debug for Tracked<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("trigger", &self.trigger)
            .field("generation", &self.state.load().generation)
            .finish_non_exhaustive()
    }
}

impl<C> Tracked<C> {
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
        Ok(Tracked {
            trust: ctx.trust.clone(),
            settings: settings.clone(),
            trigger: trigger.to_string(),
            state: ArcSwap::from_pointee(State {
                generation,
                stamps,
                client,
                tls,
            }),
            make,
            rebuilding: Mutex::new(()),
        })
    }

    /// The client to use now (see [`Tracked::current`]), without its context.
    pub fn client(&self) -> Result<Arc<C>, ScalerError> {
        {
            let state = self.state.load();
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
                    && crate::trust::file_stamps(&self.settings) != s.stamps =>
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
        let state = self.state.load();
        let stale = |s: &State<C>| self.is_stale(s);
        if !stale(&state) {
            return Ok((Arc::clone(&state.client), state.tls.clone()));
        }
        let _one = self
            .rebuilding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = self.state.load();
        if !stale(&state) {
            return Ok((Arc::clone(&state.client), state.tls.clone()));
        }
        let stamps = crate::trust::file_stamps(&self.settings);
        let tls = self
            .trust
            .context(&self.settings, &self.trigger)
            .map_err(|e| ScalerError::from_trust(&self.trigger, e))?;
        let client = (self.make)(Some(&tls))?;
        tracing::debug!(trigger = %self.trigger, generation = tls.generation(), "client rebuilt for new trust anchors or changed trigger files");
        self.state.store(Arc::new(State {
            generation: tls.generation(),
            stamps,
            client: Arc::clone(&client),
            tls: Some(tls.clone()),
        }));
        Ok((client, Some(tls)))
    }
}
