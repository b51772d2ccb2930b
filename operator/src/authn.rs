//! Who is calling the metrics API.
//!
//! Two kinds of client hold a certificate the API accepts:
//!
//! - **internal clients**, with a certificate from the internal CA (`ca.crt`): the
//!   operator's own components and its tools; they may read everything;
//! - **the kube-apiserver's aggregation layer**, with its front-proxy client certificate
//!   from the request-header CA (`--requestheader-client-ca-file`), naming the user it
//!   acts for in headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*` by
//!   default), as Kubernetes' generic API server authenticates it.
//!
//! The headers are believed only from a certificate that verifies against the
//! request-header CA *and* whose common name is one of the allowed names (an empty list
//! allows any); from any other client they are ignored. Both CAs are checked on every
//! request, not only at the handshake, so that a CA taken away also shuts out the
//! connections already open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::HeaderMap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use trustscale::trust::material;

/// The header names Kubernetes' aggregation layer uses unless told otherwise.
pub const DEFAULT_USERNAME_HEADERS: &[&str] = &["X-Remote-User"];
/// See [`DEFAULT_USERNAME_HEADERS`].
pub const DEFAULT_GROUP_HEADERS: &[&str] = &["X-Remote-Group"];
/// See [`DEFAULT_USERNAME_HEADERS`].
pub const DEFAULT_EXTRA_HEADERS_PREFIXES: &[&str] = &["X-Remote-Extra-"];

/// Request-header authentication, with the generic API server's flag names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeaderOptions {
    /// `--requestheader-client-ca-file`: the CA bundle that signs front-proxy certificates.
    pub client_ca_file: PathBuf,
    /// `--requestheader-allowed-names`: the common names allowed (empty: any).
    pub allowed_names: Vec<String>,
    /// `--requestheader-username-headers`: the first one that is set names the user.
    pub username_headers: Vec<String>,
    /// `--requestheader-group-headers`: every value of each is a group.
    pub group_headers: Vec<String>,
    /// `--requestheader-extra-headers-prefix`: headers with this prefix carry extra
    /// attributes (the rest of the name, unescaped and lower-cased, is the key).
    pub extra_headers_prefixes: Vec<String>,
}

impl RequestHeaderOptions {
    /// The aggregation layer's usual headers, any common name.
    #[must_use]
    pub fn new(client_ca_file: impl Into<PathBuf>) -> Self {
        let owned = |names: &[&str]| names.iter().map(|s| (*s).to_string()).collect();
        RequestHeaderOptions {
            client_ca_file: client_ca_file.into(),
            allowed_names: Vec::new(),
            username_headers: owned(DEFAULT_USERNAME_HEADERS),
            group_headers: owned(DEFAULT_GROUP_HEADERS),
            extra_headers_prefixes: owned(DEFAULT_EXTRA_HEADERS_PREFIXES),
        }
    }

    /// Reads the request-header CA bundle, naming the file and the flag in the error.
    pub fn read_ca(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        read_ca_file(&self.client_ca_file)
    }
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = material::read_capped(path, material::MAX_MATERIAL_BYTES)
        .map_err(|e| format!("{} (--requestheader-client-ca-file): {e}", path.display()))?;
    material::certificates_for("requestheader-client-ca-file", &bytes)
        .map_err(|e| format!("{} (--requestheader-client-ca-file): {e}", path.display()))
}

/// A user the aggregation layer acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Extra attributes (keys lower-case).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A client of the internal CA.
    Internal,
    /// A user named by the aggregation layer.
    User(User),
}

/// Why a client is not authenticated (the answer is 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No client certificate (TLS normally refuses this before any request).
    #[error("no client certificate")]
    NoCertificate,
    /// A front-proxy certificate whose common name is not allowed.
    #[error(
        "the client certificate's common name {0:?} is not one of --requestheader-allowed-names"
    )]
    NameNotAllowed(String),
    /// A front-proxy certificate without a user header.
    #[error("a front-proxy client sent no user name ({0})")]
    NoUser(String),
    /// A header that is not text.
    #[error("header {0} is not valid text")]
    BadHeader(String),
    /// A certificate no current CA verifies (one was taken away since the handshake).
    #[error("the client certificate is not trusted (any longer)")]
    Untrusted,
}

#[derive(Clone)]
struct Front {
    options: RequestHeaderOptions,
    cas: Vec<CertificateDer<'static>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

struct Verifiers {
    internal: Arc<dyn ClientCertVerifier>,
    internal_cas: Vec<CertificateDer<'static>>,
    front: Option<Front>,
}

fn verifier(cas: &[CertificateDer<'static>]) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("a CA certificate cannot be a trust anchor: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())
}

/// How long a SubjectAccessReview's answer is reused (Kubernetes' delegated authorizer
/// keeps both answers 10 s by default).
const REVIEW_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Answers kept at most; when full, the cache starts again.
const REVIEW_CACHE: usize = 4096;

/// (user, groups, extra, namespace, metric): everything the review is asked about.
type ReviewKey = (
    String,
    Vec<String>,
    BTreeMap<String, Vec<String>>,
    String,
    String,
);

/// Authorizes a user the aggregation layer names: a SubjectAccessReview asking what the
/// kube-apiserver's own authorizer asks for that path (`list` of the resource named by
/// the metric, in `external.metrics.k8s.io`, in the namespace: the grant the HPA
/// controller holds), its answer cached for [`REVIEW_TTL`].
pub struct Reviewer {
    client: kube::Client,
    cache: std::sync::Mutex<std::collections::HashMap<ReviewKey, (bool, std::time::Instant)>>,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer").finish_non_exhaustive()
    }
}

impl Reviewer {
    /// A reviewer that asks the cluster `client` reaches.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Reviewer {
            client,
            cache: std::sync::Mutex::default(),
        }
    }

    /// Whether `user` may get external metric `metric` in `namespace`.
    pub async fn allowed(
        &self,
        user: &User,
        namespace: &str,
        metric: &str,
    ) -> Result<bool, String> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        let key = (
            user.name.clone(),
            user.groups.clone(),
            user.extra.clone(),
            namespace.to_string(),
            metric.to_string(),
        );
        let now = std::time::Instant::now();
        if let Some((answer, at)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && now.duration_since(*at) < REVIEW_TTL
        {
            return Ok(*answer);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("external.metrics.k8s.io".into()),
                    version: Some("v1beta1".into()),
                    resource: Some(metric.to_string()),
                    namespace: Some(namespace.to_string()),
                    verb: Some("list".into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?
            .status
            .is_some_and(|s| s.allowed);
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= REVIEW_CACHE {
            cache.clear();
        }
        cache.insert(key, (answer, now));
        Ok(answer)
    }
}

/// Tells who a request comes from; its CAs (and the request-header settings) are replaced
/// as they change.
pub struct Authenticator {
    /// Request-header authentication from a file (`--requestheader-client-ca-file`), if
    /// that is where it comes from; otherwise [`Authenticator::set_front`] sets it (from
    /// the cluster's `extension-apiserver-authentication` ConfigMap).
    file: Option<RequestHeaderOptions>,
    verifiers: ArcSwap<Verifiers>,
    /// In a cluster: who may read what (without one, a user the aggregation layer names
    /// may read every external metric: the kube-apiserver authorized it for the path).
    reviewer: std::sync::OnceLock<Reviewer>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for the internal CA and, with `file`, the front proxy whose CA
    /// bundle `front_proxy_ca` was read from that file.
    pub fn new(
        file: Option<RequestHeaderOptions>,
        internal_ca: &[CertificateDer<'static>],
        front_proxy_ca: &[CertificateDer<'static>],
    ) -> Result<Self, String> {
        let a = Authenticator {
            reviewer: std::sync::OnceLock::new(),
            file,
            verifiers: ArcSwap::from_pointee(Verifiers {
                internal: verifier(internal_ca)?,
                internal_cas: internal_ca.to_vec(),
                front: None,
            }),
        };
        a.update(internal_ca, Some(front_proxy_ca))?;
        Ok(a)
    }

    /// Authorizes users with `reviewer` from now on (once; later calls are ignored).
    pub fn use_reviewer(&self, reviewer: Reviewer) {
        let _ = self.reviewer.set(reviewer);
    }

    /// Whether `caller` may get external metric `metric` in `namespace`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        namespace: &str,
        metric: &str,
    ) -> Result<bool, String> {
        match (caller, self.reviewer.get()) {
            (Caller::Internal, _) | (Caller::User(_), None) => Ok(true),
            (Caller::User(user), Some(r)) => r.allowed(user, namespace, metric).await,
        }
    }

    /// The request-header options read from a file, if that is their source.
    #[must_use]
    pub fn request_header(&self) -> Option<&RequestHeaderOptions> {
        self.file.as_ref()
    }

    /// The request-header CAs now trusted (none: request-header authentication is off).
    #[must_use]
    pub fn front_proxy_cas(&self) -> Vec<CertificateDer<'static>> {
        self.verifiers
            .load()
            .front
            .as_ref()
            .map(|f| f.cas.clone())
            .unwrap_or_default()
    }

    /// Publishes new internal CAs and, when the request-header settings come from a file,
    /// the CAs read from it (`None`: the request-header CAs stay as they are). Checked
    /// first: on error nothing changes. Concurrent updates never lose each other's part.
    pub fn update(
        &self,
        internal_ca: &[CertificateDer<'static>],
        front_proxy_ca: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), String> {
        let internal = verifier(internal_ca)?;
        let from_file = match (&self.file, front_proxy_ca) {
            (Some(options), Some(cas)) => Some(Front {
                options: options.clone(),
                cas: cas.to_vec(),
                verifier: verifier(cas)?,
            }),
            _ => None,
        };
        self.verifiers.rcu(|current| Verifiers {
            internal: Arc::clone(&internal),
            internal_cas: internal_ca.to_vec(),
            front: from_file.clone().or_else(|| current.front.clone()),
        });
        Ok(())
    }

    /// Sets (or, with `None`, turns off) request-header authentication: the settings and
    /// the CAs of the front proxy (checked first: on error nothing changes).
    pub fn set_front(
        &self,
        front: Option<(RequestHeaderOptions, Vec<CertificateDer<'static>>)>,
    ) -> Result<(), String> {
        let front = match front {
            Some((options, cas)) => Some(Front {
                verifier: verifier(&cas)?,
                options,
                cas,
            }),
            None => None,
        };
        self.verifiers.rcu(|current| Verifiers {
            internal: Arc::clone(&current.internal),
            internal_cas: current.internal_cas.clone(),
            front: front.clone(),
        });
        Ok(())
    }

    /// Who sent a request over a connection whose client presented `chain` (leaf first).
    pub fn caller(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return Err(Refusal::NoCertificate);
        };
        let leaf = CertificateDer::from(leaf.as_ref());
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let now = UnixTime::now();
        let v = self.verifiers.load();
        let verifies = |verifier: &Arc<dyn ClientCertVerifier>| {
            verifier
                .verify_client_cert(&leaf, &intermediates, now)
                .is_ok()
        };
        let internal = verifies(&v.internal);
        if let Some(front) = &v.front
            && verifies(&front.verifier)
        {
            match front_proxy_user(&front.options, &leaf, headers) {
                Ok(user) => return Ok(Caller::User(user)),
                // A certificate both CAs verify is still an internal client.
                Err(_) if internal => return Ok(Caller::Internal),
                Err(refusal) => return Err(refusal),
            }
        }
        if internal {
            Ok(Caller::Internal)
        } else {
            Err(Refusal::Untrusted)
        }
    }
}

fn common_name(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

fn front_proxy_user(
    opts: &RequestHeaderOptions,
    leaf: &CertificateDer<'_>,
    headers: &HeaderMap,
) -> Result<User, Refusal> {
    if !opts.allowed_names.is_empty() {
        let cn = common_name(leaf).unwrap_or_default();
        if !opts.allowed_names.contains(&cn) {
            return Err(Refusal::NameNotAllowed(cn));
        }
    }
    // UTF-8, not only visible ASCII: user and group names may be any text.
    let text = |name: &str, value: &hyper::header::HeaderValue| {
        std::str::from_utf8(value.as_bytes())
            .map(str::to_string)
            .map_err(|_| Refusal::BadHeader(name.to_string()))
    };
    let mut user = None;
    for name in &opts.username_headers {
        if let Some(v) = headers.get(name.as_str()) {
            let v = text(name, v)?;
            if !v.is_empty() {
                user = Some(v);
                break;
            }
        }
    }
    let name = user.ok_or_else(|| Refusal::NoUser(opts.username_headers.join(", ")))?;
    let mut groups = Vec::new();
    for header in &opts.group_headers {
        for v in headers.get_all(header.as_str()) {
            let v = text(header, v)?;
            if !v.is_empty() {
                groups.push(v);
            }
        }
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in &opts.extra_headers_prefixes {
        let prefix = prefix.to_ascii_lowercase();
        for (header, v) in headers {
            // Header names are lower-case here.
            let Some(key) = header.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            if key.is_empty() {
                continue;
            }
            // Path unescaping, as Kubernetes does: `+` stays `+`.
            let key = crate::service::percent_decode(&key.replace('+', "%2B")).to_lowercase();
            extra
                .entry(key)
                .or_default()
                .push(text(header.as_str(), v)?);
        }
    }
    Ok(User {
        name,
        groups,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn client(ca: &Ca, cn: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn users_groups_and_extras_come_from_an_allowed_front_proxy_only() {
        let (internal, front) = (ca("internal"), ca("front"));
        let mut opts = RequestHeaderOptions::new("/unused");
        opts.allowed_names = vec!["front-proxy-client".into()];
        let a = Authenticator::new(
            Some(opts),
            std::slice::from_ref(&internal.der),
            std::slice::from_ref(&front.der),
        )
        .unwrap();
        let h = headers(&[
            ("x-remote-user", b""),
            ("x-remote-user", b"ignored-second-value"),
            ("x-remote-group", b"a"),
            ("x-remote-group", b""),
            ("x-remote-group", b"b"),
            ("x-remote-extra-scopes%2fid", b"x"),
            ("x-remote-extra-Scopes%2Fid", b"y"),
            ("x-remote-extra-a+b", b"z"),
        ]);
        // The first value of the user header is empty: no user.
        let proxy = [client(&front, "front-proxy-client")];
        assert!(matches!(
            a.caller(Some(&proxy), &h),
            Err(Refusal::NoUser(_))
        ));
        let mut h2 = h.clone();
        h2.remove("x-remote-user");
        h2.append(
            "x-remote-user",
            hyper::header::HeaderValue::from_bytes("jöhn".as_bytes()).unwrap(),
        );
        let Caller::User(user) = a.caller(Some(&proxy), &h2).unwrap() else {
            panic!("a user");
        };
        assert_eq!(user.name, "jöhn");
        assert_eq!(user.groups, ["a", "b"]);
        assert_eq!(user.extra["scopes/id"], ["x", "y"]);
        assert_eq!(user.extra["a+b"], ["z"]);
        // Not an allowed name; not the front proxy's CA; no certificate.
        let other = [client(&front, "someone")];
        assert_eq!(
            a.caller(Some(&other), &h2),
            Err(Refusal::NameNotAllowed("someone".into()))
        );
        let internal_client = [client(&internal, "front-proxy-client")];
        assert_eq!(a.caller(Some(&internal_client), &h2), Ok(Caller::Internal));
        assert_eq!(a.caller(None, &h2), Err(Refusal::NoCertificate));
        // A user name that is not UTF-8.
        let bad = headers(&[("x-remote-user", b"\xff")]);
        assert_eq!(
            a.caller(Some(&proxy), &bad),
            Err(Refusal::BadHeader("X-Remote-User".into()))
        );
        // The front-proxy CA taken away: its clients are refused on open connections too.
        a.update(
            std::slice::from_ref(&internal.der),
            Some(std::slice::from_ref(&ca("new").der)),
        )
        .unwrap();
        assert_eq!(a.caller(Some(&proxy), &h2), Err(Refusal::Untrusted));
    }

    #[test]
    fn without_request_header_authentication_headers_mean_nothing() {
        let (internal, front) = (ca("internal"), ca("front"));
        let a = Authenticator::new(None, std::slice::from_ref(&internal.der), &[]).unwrap();
        let h = headers(&[("x-remote-user", b"admin")]);
        assert_eq!(
            a.caller(Some(&[client(&internal, "c")]), &h),
            Ok(Caller::Internal)
        );
        assert_eq!(
            a.caller(Some(&[client(&front, "front-proxy-client")]), &h),
            Err(Refusal::Untrusted)
        );
    }
}
