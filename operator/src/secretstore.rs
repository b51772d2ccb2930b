//! The internal certificates kept in a Secret (KEDA's `kedaorg-certs`), shared by every
//! replica.
//!
//! The Secret is the truth; the certificate folder is each replica's working copy, the
//! one it serves (so the folder must be writable: an `emptyDir`, not the Secret mounted).
//! One round: read the Secret; adopt what it holds into the folder; let rotation do
//! what is due in the folder; write the folder back if it now differs, with the
//! resourceVersion read (a create when there was no Secret). A replica whose write
//! conflicts (409, or AlreadyExists for a create) starts the round again, so it adopts
//! what the winner wrote: two replicas never publish two CAs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::cluster::Cluster;
use crate::pki::{self, Action, PkiError, PkiOptions};

/// Rounds tried when writes keep conflicting.
const ROUNDS: usize = 5;

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The folder could not be read or written, or rotation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A request failed.
    #[error("Secret {namespace}/{name}: {what}")]
    Api {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Every round conflicted with another writer.
    #[error("Secret {namespace}/{name}: {ROUNDS} writes in a row conflicted with another writer")]
    Contended {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

/// What a round did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// The folder took a set it did not hold (the Secret's, or the one just written).
    pub adopted: bool,
    /// What rotation did in the folder.
    pub action: Action,
    /// The folder's set was written to the Secret.
    pub written: bool,
    /// When rotation is next due.
    pub next: SystemTime,
}

/// The Secret that holds the internal certificates.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

type Files = BTreeMap<String, Vec<u8>>;

fn files_of(secret: &Secret) -> Files {
    secret
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                pki::CA_CRT | pki::CA_KEY | pki::TLS_CRT | pki::TLS_KEY
            )
        })
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

impl SecretStore {
    /// The Secret `name` in the cluster's (the operator's) namespace.
    #[must_use]
    pub fn new(cluster: &Cluster, name: &str) -> Self {
        SecretStore {
            api: Api::namespaced(cluster.client.clone(), &cluster.namespace),
            namespace: cluster.namespace.clone(),
            name: name.to_string(),
        }
    }

    /// `namespace/name`.
    #[must_use]
    pub fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn error(&self, what: &'static str) -> impl FnOnce(kube::Error) -> SecretError + '_ {
        move |source| SecretError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            what,
            source,
        }
    }

    async fn read(&self) -> Result<Option<(Option<String>, Files)>, SecretError> {
        match self.api.get(&self.name).await {
            Ok(s) => Ok(Some((s.metadata.resource_version.clone(), files_of(&s)))),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
            Err(e) => Err(self.error("reading it")(e)),
        }
    }

    /// Writes `files` (a create without `resource_version`); `Ok(false)`: another writer
    /// got there first.
    async fn write(
        &self,
        existing: Option<Option<String>>,
        files: &Files,
    ) -> Result<bool, SecretError> {
        let data: BTreeMap<String, ByteString> = files
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect();
        let result = match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            "trustscale".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                self.api.create(&PostParams::default(), &secret).await
            }
            Some(rv) => {
                // What else the Secret holds (labels, other keys) stays as it is.
                let mut secret = self
                    .api
                    .get(&self.name)
                    .await
                    .map_err(self.error("reading it"))?;
                if secret.metadata.resource_version != rv {
                    return Ok(false);
                }
                let mut merged = secret.data.take().unwrap_or_default();
                for k in [pki::CA_CRT, pki::CA_KEY, pki::TLS_CRT, pki::TLS_KEY] {
                    merged.remove(k);
                }
                merged.extend(data);
                secret.data = Some(merged);
                secret.string_data = None;
                self.api
                    .replace(&self.name, &PostParams::default(), &secret)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
            Err(e) => Err(self.error("writing it")(e)),
        }
    }

    /// One round (see the module's documentation): adopt, rotate, write back.
    ///
    /// With `may_rotate` false (a follower, once there is a leader), a Secret that holds a
    /// set is only adopted, never rotated or written; an empty or missing one is still
    /// filled (the first replica up does it; a race ends in one 409 and an adoption).
    pub async fn sync(
        &self,
        dir: &Path,
        opts: &PkiOptions,
        may_rotate: bool,
    ) -> Result<Round, SecretError> {
        // Rotation works on a staged copy: the served folder only ever takes a set the
        // Secret holds (read, or just written), so a replica that loses a race never serves
        // a CA of its own, even for a moment.
        let staging = dir.join(format!("..round-{}", std::process::id()));
        for round in 0..ROUNDS {
            let current = self.read().await?;
            let local = pki::read_files(dir).unwrap_or_default();
            if !may_rotate
                && let Some((_, files)) = &current
                && !files.is_empty()
            {
                let adopted = *files != local;
                if adopted {
                    pki::write_file_map(dir, files)?;
                }
                return Ok(Round {
                    adopted,
                    action: pki::Action::Kept,
                    written: false,
                    next: SystemTime::now() + Duration::from_secs(60),
                });
            }
            // The starting point: what the Secret holds, even damaged (rotation repairs it
            // keeping its CA, as in a folder, instead of starting a second one); else what
            // the folder holds.
            let start = match &current {
                Some((_, files)) if !files.is_empty() => files.clone(),
                _ => local.clone(),
            };
            let _ = std::fs::remove_dir_all(&staging);
            let staged = (|| {
                if !start.is_empty() {
                    pki::write_file_map(&staging, &start)?;
                }
                let (action, next) = pki::ensure(&staging, opts, SystemTime::now())?;
                Ok::<_, PkiError>((action, next, pki::read_files(&staging)?))
            })();
            let _ = std::fs::remove_dir_all(&staging);
            let (action, next, candidate) = staged?;
            let held = current.as_ref().map(|(_, f)| f);
            let written = if held == Some(&candidate) {
                false
            } else if self.write(current.map(|(rv, _)| rv), &candidate).await? {
                true
            } else {
                tracing::info!(
                    secret = %self.describe(),
                    round,
                    "another replica wrote the certificates first; adopting what it wrote"
                );
                tokio::time::sleep(Duration::from_millis(50 * (round as u64 + 1))).await;
                continue;
            };
            let adopted = candidate != local;
            if adopted {
                pki::write_file_map(dir, &candidate)?;
            }
            return Ok(Round {
                adopted,
                action,
                written,
                next,
            });
        }
        Err(SecretError::Contended {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        })
    }

    /// Changes to the Secret (another replica's rotation), watched by name.
    pub fn changes(&self) -> impl futures_util::Stream<Item = ()> + Send + use<> {
        use futures_util::StreamExt as _;
        use kube::runtime::WatchStreamExt as _;
        kube::runtime::watcher::watcher(
            self.api.clone(),
            kube::runtime::watcher::Config::default()
                .fields(&format!("metadata.name={}", self.name)),
        )
        .default_backoff()
        .map(|_| ())
    }
}
