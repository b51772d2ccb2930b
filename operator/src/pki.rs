//! The operator's internal certificates in `--cert-dir`: `ca.crt`, `ca.key`, `tls.crt`,
//! `tls.key` (KEDA's names).
//!
//! Writes are atomic as a set: every file goes into a fresh `..<stamp>` folder, then the
//! `..data` symlink is swapped to it (as the kubelet updates a mounted Secret), so a crash
//! at any moment leaves either the old or the new set, never a mix. Keys are 0600.
//!
//! With rotation on, the leaf is renewed at 70 % of its lifetime, and the CA at 70 % of
//! its own: the new CA joins `ca.crt` beside the old one until the old one expires, and the
//! new leaf is served with a cross-certificate (the new CA signed by the old), so a client
//! that trusts either CA still connects.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use trustscale::trust::material;
use trustscale::trust::{ServerIdentity, TrustError};

/// File names, as KEDA's.
pub const CA_CRT: &str = "ca.crt";
/// The CA private key.
pub const CA_KEY: &str = "ca.key";
/// The serving certificate chain.
pub const TLS_CRT: &str = "tls.crt";
/// The serving private key.
pub const TLS_KEY: &str = "tls.key";

/// When a certificate is renewed, as a fraction of its lifetime.
pub const RENEW_AT: f64 = 0.7;

/// Problems with the certificate folder.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The files are there but do not form a usable set.
    #[error("{dir}: {reason}")]
    Invalid {
        /// The certificate folder.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The request-header CA bundle cannot be used.
    #[error("{reason}")]
    RequestHeaderCa {
        /// What is wrong, naming the file and the flag.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate certificates")]
    Generate(#[from] rcgen::Error),
    /// The trust layer refused the material.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Lifetimes and names of generated certificates.
#[derive(Clone, Debug)]
pub struct PkiOptions {
    /// CA lifetime (KEDA: 10 years).
    pub ca_lifetime: Duration,
    /// Leaf lifetime (KEDA: 1 year).
    pub cert_lifetime: Duration,
    /// DNS names of the service (loopback names and addresses are always added).
    pub dns_names: Vec<String>,
}

impl Default for PkiOptions {
    fn default() -> Self {
        PkiOptions {
            ca_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            cert_lifetime: Duration::from_secs(365 * 24 * 3600),
            dns_names: Vec::new(),
        }
    }
}

/// The parsed contents of a certificate folder.
pub struct CertSet {
    /// `ca.crt`: trusted CAs, newest first.
    pub ca: Vec<CertificateDer<'static>>,
    /// `ca.key` (absent when the user brings only the CA certificate).
    pub ca_key: Option<String>,
    /// `tls.crt`: leaf first, then any cross-certificates.
    pub chain: Vec<CertificateDer<'static>>,
    /// `tls.key`.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for CertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSet")
            .field("ca", &self.ca.len())
            .field("ca_key", &self.ca_key.as_ref().map(|_| "<redacted>"))
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Validity of one certificate, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

impl Validity {
    /// The moment this certificate is due for renewal (70 % of its lifetime).
    #[must_use]
    pub fn renew_at(&self) -> i64 {
        self.not_before + ((self.not_after - self.not_before) as f64 * RENEW_AT) as i64
    }
}

/// Reads a certificate's validity.
pub fn validity(cert: &CertificateDer<'_>) -> Option<Validity> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(Validity {
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
    })
}

fn now_secs(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Where the files are read from: the folder `..data` points to, resolved once, so that
/// every file of one load comes from the same set even while a swap happens.
pub fn source_dir(dir: &Path) -> PathBuf {
    match fs::read_link(dir.join("..data")) {
        Ok(target) => dir.join(target),
        Err(_) => dir.to_path_buf(),
    }
}

fn read(src: &Path, name: &str) -> Result<Vec<u8>, PkiError> {
    let path = src.join(name);
    material::read_capped(&path, material::MAX_MATERIAL_BYTES)
        .map_err(|source| PkiError::Io { path, source })
}

/// Whether the folder holds any of the four files.
#[must_use]
pub fn has_files(dir: &Path) -> bool {
    [CA_CRT, TLS_CRT, TLS_KEY]
        .iter()
        .any(|f| source_dir(dir).join(f).exists())
}

/// The files of the folder's current set, as bytes (those that are there).
pub fn read_files(dir: &Path) -> Result<std::collections::BTreeMap<String, Vec<u8>>, PkiError> {
    let src = source_dir(dir);
    let mut files = std::collections::BTreeMap::new();
    for name in [CA_CRT, CA_KEY, TLS_CRT, TLS_KEY] {
        match read(&src, name) {
            Ok(bytes) => {
                files.insert(name.to_string(), bytes);
            }
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

/// Writes a set given as files (the four names; keys written 0600), atomically.
pub fn write_file_map(
    dir: &Path,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<(), PkiError> {
    let list: Vec<(&str, &[u8], bool)> = [CA_CRT, CA_KEY, TLS_CRT, TLS_KEY]
        .into_iter()
        .filter_map(|name| {
            files
                .get(name)
                .map(|b| (name, b.as_slice(), name.ends_with(".key")))
        })
        .collect();
    write_set(dir, &list)
}

/// Loads the folder (`ca.key` is optional).
pub fn load(dir: &Path) -> Result<CertSet, PkiError> {
    let src = source_dir(dir);
    let invalid = |reason: String| PkiError::Invalid {
        dir: dir.to_path_buf(),
        reason,
    };
    let ca = material::certificates_for("ca", &read(&src, CA_CRT)?)
        .map_err(|e| invalid(format!("{CA_CRT}: {e}")))?;
    let chain = material::certificates_for("cert", &read(&src, TLS_CRT)?)
        .map_err(|e| invalid(format!("{TLS_CRT}: {e}")))?;
    let key = material::private_key(&read(&src, TLS_KEY)?, None)
        .map_err(|e| invalid(format!("{TLS_KEY}: {e}")))?;
    let ca_key = match read(&src, CA_KEY) {
        Ok(bytes) => Some(
            String::from_utf8(bytes).map_err(|_| invalid(format!("{CA_KEY} is not PEM text")))?,
        ),
        Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(CertSet {
        ca,
        ca_key,
        chain,
        key,
    })
}

/// Checks a set: the key matches the leaf, the leaf is valid now, and it chains to a CA
/// in `ca.crt`. Returns the leaf's validity.
pub fn validate(dir: &Path, set: &CertSet, now: SystemTime) -> Result<Validity, PkiError> {
    let invalid = |reason: String| PkiError::Invalid {
        dir: dir.to_path_buf(),
        reason,
    };
    let provider = rustls::crypto::ring::default_provider();
    let leaf = set
        .chain
        .first()
        .ok_or_else(|| invalid(format!("{TLS_CRT} holds no certificate")))?;
    rustls::sign::CertifiedKey::from_der(set.chain.clone(), set.key.clone_key(), &provider)
        .map_err(|e| invalid(format!("{TLS_KEY} does not match {TLS_CRT}: {e}")))?;
    let v = validity(leaf).ok_or_else(|| invalid(format!("{TLS_CRT}: the leaf does not parse")))?;
    let t = now_secs(now);
    if t >= v.not_after {
        return Err(invalid(format!("{TLS_CRT} expired")));
    }
    let anchors: Vec<_> = set
        .ca
        .iter()
        .filter_map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    if anchors.is_empty() {
        return Err(invalid(format!("{CA_CRT} holds no usable CA certificate")));
    }
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| invalid(format!("{TLS_CRT}: {e}")))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &set.chain[1..],
        UnixTime::since_unix_epoch(Duration::from_secs(t.max(0) as u64)),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| invalid(format!("{TLS_CRT} does not chain to a CA in {CA_CRT}: {e}")))?;
    Ok(v)
}

/// The server identity and client CAs of a valid set.
pub fn identity(set: &CertSet) -> (ServerIdentity, Vec<CertificateDer<'static>>) {
    (
        ServerIdentity {
            chain: set.chain.clone(),
            key: set.key.clone_key(),
        },
        set.ca.clone(),
    )
}

/// Writes a full set atomically (`..data` swap). Keys are written 0600.
pub fn write_set(dir: &Path, files: &[(&str, &[u8], bool)]) -> Result<(), PkiError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let stamp = format!(
        "..{}_{:08x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        fastrand::u32(..)
    );
    let staged = dir.join(&stamp);
    fs::create_dir(&staged).map_err(io(&staged))?;
    // A write that fails half-way (out of space or descriptors, say) leaves nothing behind:
    // its staged folder goes, and the current set stays as it was.
    let mut swapped = false;
    let written = stage_and_swap(dir, &stamp, &staged, files, &mut swapped);
    // Once `..data` points at it, the staged folder IS the current set: it stays, even if
    // a step after the swap failed.
    if written.is_err() && !swapped {
        let _ = fs::remove_dir_all(&staged);
    }
    written
}

fn stage_and_swap(
    dir: &Path,
    stamp: &str,
    staged: &Path,
    files: &[(&str, &[u8], bool)],
    swapped: &mut bool,
) -> Result<(), PkiError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, source }
    };
    fs::set_permissions(staged, fs::Permissions::from_mode(0o755)).map_err(io(staged))?;
    for (name, bytes, secret) in files {
        let path = staged.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if *secret { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(bytes).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    fs::File::open(staged)
        .and_then(|d| d.sync_all())
        .map_err(io(staged))?;
    // The swap: one rename makes the whole new set current.
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(stamp, &tmp).map_err(io(&tmp))?;
    // The set this swap replaces: kept one more round, for a reader that resolved
    // `..data` just before the swap.
    let previous = fs::read_link(dir.join("..data")).ok();
    fs::rename(&tmp, dir.join("..data")).map_err(io(dir))?;
    *swapped = true;
    // Visible names point through ..data (replacing plain files atomically).
    for (name, _, _) in files {
        let link = dir.join(name);
        let target = PathBuf::from("..data").join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let tmp = dir.join(format!("..{name}_tmp"));
        let _ = fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(io(&tmp))?;
        fs::rename(&tmp, &link).map_err(io(&link))?;
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    // Old stamped folders are no longer referenced.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // One that was current moments ago may still be read by a reader that resolved
            // `..data` before the swap: those stay a while.
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > Duration::from_secs(10)));
            let just_replaced = previous
                .as_deref()
                .is_some_and(|p| p.as_os_str() == e.file_name().as_os_str());
            if name.starts_with("..")
                && name != stamp
                && name != "..data"
                && !just_replaced
                && e.path().is_dir()
                && stale
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validity_params(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    let start = time::OffsetDateTime::from(now);
    // Backdate a little for clock skew, but never by more than a tenth of the lifetime.
    let skew = Duration::from_secs(60).min(lifetime / 10);
    params.not_before = start - skew;
    params.not_after = start + lifetime;
}

fn ca_params(now: SystemTime, lifetime: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(
        DnType::CommonName,
        format!("trustscale internal CA {}", now_secs(now)),
    );
    p.distinguished_name
        .push(DnType::OrganizationName, "trustscale");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial());
    validity_params(&mut p, now, lifetime);
    p
}

fn leaf_params(now: SystemTime, opts: &PkiOptions) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(
        DnType::CommonName,
        opts.dns_names.first().map_or("trustscale", String::as_str),
    );
    let mut sans: Vec<SanType> = Vec::new();
    for name in opts
        .dns_names
        .iter()
        .map(String::as_str)
        .chain(["localhost"])
    {
        let san = SanType::DnsName(name.to_string().try_into()?);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    sans.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    sans.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(random_serial());
    validity_params(&mut p, now, opts.cert_lifetime);
    Ok(p)
}

/// What [`ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing was due.
    Kept,
    /// A fresh CA and leaf were generated (the folder held none).
    Generated(String),
    /// The leaf was damaged or missing (the reason) and a new one was issued by the CA
    /// already there: clients that trust it keep working.
    RepairedLeaf(String),
    /// The CA itself was unusable (the reason): a new CA and leaf were generated, and every
    /// client holding the old caBundle is locked out until it gets the new one.
    ReplacedCa(String),
    /// The leaf was renewed under the current CA.
    RenewedLeaf,
    /// A new CA was made (the old one stays trusted until it expires) with a new leaf.
    RotatedCa,
    /// Expired CAs were dropped from `ca.crt`.
    PrunedCa,
}

/// Rotation on: makes sure the folder holds a valid, current set; generates or renews
/// what is due. Returns what it did and when to look again.
pub fn ensure(
    dir: &Path,
    opts: &PkiOptions,
    now: SystemTime,
) -> Result<(Action, SystemTime), PkiError> {
    let current = load(dir).and_then(|set| {
        let leaf = validate(dir, &set, now)?;
        let key_pem = set.ca_key.clone().ok_or_else(|| PkiError::Invalid {
            dir: dir.to_path_buf(),
            reason: format!("{CA_KEY} is missing"),
        })?;
        let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            dir: dir.to_path_buf(),
            reason: format!("{CA_KEY}: {e}"),
        })?;
        let newest = set.ca[0].clone();
        let issuer = Issuer::from_ca_cert_der(&newest, ca_key).map_err(|e| PkiError::Invalid {
            dir: dir.to_path_buf(),
            reason: format!("{CA_KEY} does not fit the first certificate of {CA_CRT}: {e}"),
        })?;
        if !issuer_key_matches(&newest, &key_pem) {
            return Err(PkiError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!("{CA_KEY} does not match the first certificate of {CA_CRT}"),
            });
        }
        Ok((set, leaf, issuer, key_pem))
    });
    let t = now_secs(now);
    let (set, leaf, issuer, ca_key_pem) = match current {
        Ok(c) => c,
        Err(e) if !has_files(dir) => {
            let _ = e;
            generate_all(dir, opts, now)?;
            return Ok((
                Action::Generated("the folder holds no certificates".into()),
                next_check(dir, now),
            ));
        }
        Err(e) => {
            let reason = crate::pki::describe(&e);
            // The leaf is damaged or missing: a CA that is still good issues a new one, so
            // that every client holding the caBundle keeps trusting this server. Only a CA
            // that is itself unusable is replaced.
            match usable_ca(dir, now) {
                Ok((ca, issuer, ca_key_pem)) => {
                    issue_leaf(dir, opts, now, &issuer, &ca, &ca_key_pem, &[])?;
                    return Ok((Action::RepairedLeaf(reason), next_check(dir, now)));
                }
                // A read that failed for another reason (out of descriptors, a disk
                // error) says nothing about the CA: try again later.
                Err(PkiError::Io { path, source })
                    if source.kind() != std::io::ErrorKind::NotFound =>
                {
                    return Err(PkiError::Io { path, source });
                }
                Err(ca_problem) => {
                    generate_all(dir, opts, now)?;
                    return Ok((
                        Action::ReplacedCa(format!("{reason}; {}", describe(&ca_problem))),
                        next_check(dir, now),
                    ));
                }
            }
        }
    };
    let ca_v = validity(&set.ca[0]).ok_or_else(|| PkiError::Invalid {
        dir: dir.to_path_buf(),
        reason: "CA does not parse".into(),
    })?;
    let live_old: Vec<CertificateDer<'static>> = set.ca[1..]
        .iter()
        .filter(|c| validity(c).is_some_and(|v| v.not_after > t))
        .cloned()
        .collect();
    let action = if t >= ca_v.renew_at() {
        rotate_ca(dir, opts, now, &set, &issuer)?;
        Action::RotatedCa
    } else if t >= leaf.renew_at() || !issued_by(&set.chain[0], &set.ca[0]) {
        let cross: Vec<CertificateDer<'static>> = set.chain[1..]
            .iter()
            .filter(|c| validity(c).is_some_and(|v| v.not_after > t))
            .cloned()
            .collect();
        let mut ca = vec![set.ca[0].clone()];
        ca.extend(live_old.iter().cloned());
        issue_leaf(dir, opts, now, &issuer, &ca, &ca_key_pem, &cross)?;
        Action::RenewedLeaf
    } else if live_old.len() + 1 != set.ca.len() {
        let mut ca = vec![set.ca[0].clone()];
        ca.extend(live_old.iter().cloned());
        let cross: Vec<CertificateDer<'static>> = set.chain[1..]
            .iter()
            .filter(|c| validity(c).is_some_and(|v| v.not_after > t))
            .cloned()
            .collect();
        let mut chain = vec![set.chain[0].clone()];
        chain.extend(cross);
        write_files(dir, &ca, &ca_key_pem, &chain, &set.key)?;
        Action::PrunedCa
    } else {
        Action::Kept
    };
    Ok((action, next_check(dir, now)))
}

fn issuer_key_matches(ca: &CertificateDer<'_>, key_pem: &str) -> bool {
    let Ok(kp) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, c)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
        return false;
    };
    c.public_key().subject_public_key.data.as_ref() == rcgen::PublicKeyData::der_bytes(&kp)
}

fn issued_by(leaf: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> bool {
    let (Ok((_, l)), Ok((_, c))) = (
        x509_parser::parse_x509_certificate(leaf.as_ref()),
        x509_parser::parse_x509_certificate(ca.as_ref()),
    ) else {
        return false;
    };
    l.issuer() == c.subject()
}

fn write_files(
    dir: &Path,
    ca: &[CertificateDer<'static>],
    ca_key_pem: &str,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), PkiError> {
    let ca_pem = material::certs_to_pem(ca.iter());
    let chain_pem = material::certs_to_pem(chain.iter());
    let key_pem = material::pem_encode("PRIVATE KEY", key.secret_der());
    write_set(
        dir,
        &[
            (CA_CRT, ca_pem.as_bytes(), false),
            (CA_KEY, ca_key_pem.as_bytes(), true),
            (TLS_CRT, chain_pem.as_bytes(), false),
            (TLS_KEY, key_pem.as_bytes(), true),
        ],
    )
}

/// A PKI error in words, with its cause.
pub(crate) fn describe(e: &PkiError) -> String {
    trustscale::error::Chain(e).to_string()
}

/// The CA of the folder, if it can still issue: `ca.crt` parses, its first certificate is
/// valid now, and `ca.key` matches it. Returns every certificate of `ca.crt` that is still
/// valid (the newest first), the issuer and the key's PEM.
fn usable_ca(
    dir: &Path,
    now: SystemTime,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        Issuer<'static, KeyPair>,
        String,
    ),
    PkiError,
> {
    let src = source_dir(dir);
    let invalid = |reason: String| PkiError::Invalid {
        dir: dir.to_path_buf(),
        reason,
    };
    let ca = material::certificates_for("ca", &read(&src, CA_CRT)?)
        .map_err(|e| invalid(format!("{CA_CRT}: {e}")))?;
    let key_pem = String::from_utf8(read(&src, CA_KEY)?)
        .map_err(|_| invalid(format!("{CA_KEY} is not PEM text")))?;
    let t = now_secs(now);
    let newest = ca
        .first()
        .cloned()
        .ok_or_else(|| invalid(format!("{CA_CRT} holds no certificate")))?;
    let v = validity(&newest).ok_or_else(|| invalid(format!("{CA_CRT} does not parse")))?;
    if t >= v.not_after || t < v.not_before {
        return Err(invalid(format!("the CA in {CA_CRT} is not valid now")));
    }
    if !issuer_key_matches(&newest, &key_pem) {
        return Err(invalid(format!(
            "{CA_KEY} does not match the first certificate of {CA_CRT}"
        )));
    }
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(format!("{CA_KEY}: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(&newest, ca_key)
        .map_err(|e| invalid(format!("{CA_KEY} does not fit {CA_CRT}: {e}")))?;
    let live: Vec<CertificateDer<'static>> = ca
        .into_iter()
        .filter(|c| validity(c).is_some_and(|v| v.not_after > t))
        .collect();
    Ok((live, issuer, key_pem))
}

fn issue_leaf(
    dir: &Path,
    opts: &PkiOptions,
    now: SystemTime,
    issuer: &Issuer<'_, KeyPair>,
    ca: &[CertificateDer<'static>],
    ca_key_pem: &str,
    cross: &[CertificateDer<'static>],
) -> Result<(), PkiError> {
    let key = KeyPair::generate()?;
    let leaf = leaf_params(now, opts)?.signed_by(&key, issuer)?;
    let mut chain = vec![leaf.der().clone()];
    chain.extend(cross.iter().cloned());
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    write_files(dir, ca, ca_key_pem, &chain, &key_der)
}

fn generate_all(dir: &Path, opts: &PkiOptions, now: SystemTime) -> Result<(), PkiError> {
    let ca_key = KeyPair::generate()?;
    let params = ca_params(now, opts.ca_lifetime);
    let ca = params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(params, ca_key);
    issue_leaf(
        dir,
        opts,
        now,
        &issuer,
        &[ca.der().clone()],
        &ca_key_pem,
        &[],
    )
}

fn rotate_ca(
    dir: &Path,
    opts: &PkiOptions,
    now: SystemTime,
    set: &CertSet,
    old: &Issuer<'_, KeyPair>,
) -> Result<(), PkiError> {
    let t = now_secs(now);
    let new_key = KeyPair::generate()?;
    let params = ca_params(now, opts.ca_lifetime);
    let new_ca = params.self_signed(&new_key)?;
    // The new CA, signed by the old: clients that trust only the old CA can still build a
    // path to the new leaf while the old CA lives.
    let cross = params.signed_by(&new_key, old)?;
    let new_key_pem = new_key.serialize_pem();
    let issuer = Issuer::new(params, new_key);
    let mut ca = vec![new_ca.der().clone()];
    ca.extend(
        set.ca
            .iter()
            .filter(|c| validity(c).is_some_and(|v| v.not_after > t))
            .cloned(),
    );
    issue_leaf(
        dir,
        opts,
        now,
        &issuer,
        &ca,
        &new_key_pem,
        &[cross.der().clone()],
    )
}

/// When the folder next needs attention: the leaf's or the newest CA's renewal, or the
/// expiry of an older CA.
#[must_use]
pub fn next_check(dir: &Path, now: SystemTime) -> SystemTime {
    let soon = now + Duration::from_secs(1);
    let Ok(set) = load(dir) else { return soon };
    let mut at: Vec<i64> = Vec::new();
    if let Some(v) = set.chain.first().and_then(validity) {
        at.push(v.renew_at());
    }
    if let Some(v) = set.ca.first().and_then(validity) {
        at.push(v.renew_at());
    }
    at.extend(set.ca[1..].iter().filter_map(validity).map(|v| v.not_after));
    at.extend(
        set.chain[1..]
            .iter()
            .filter_map(validity)
            .map(|v| v.not_after),
    );
    let t = now_secs(now);
    let next = at.into_iter().filter(|a| *a > t).min().unwrap_or(t + 3600);
    UNIX_EPOCH + Duration::from_secs(next.max(0) as u64) + Duration::from_millis(50)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_ca(dir: &Path) -> CertificateDer<'static> {
        load_ca_certs(dir)[0].clone()
    }

    fn load_ca_certs(dir: &Path) -> Vec<CertificateDer<'static>> {
        let bytes = std::fs::read(source_dir(dir).join(CA_CRT)).unwrap();
        material::certificates_for("ca", &bytes).unwrap()
    }

    fn fresh() -> (tempfile::TempDir, PkiOptions) {
        let dir = tempfile::tempdir().unwrap();
        let opts = PkiOptions::default();
        let (action, _) = ensure(dir.path(), &opts, SystemTime::now()).unwrap();
        assert!(matches!(action, Action::Generated(_)), "{action:?}");
        (dir, opts)
    }

    #[test]
    fn a_damaged_or_missing_leaf_is_reissued_by_the_ca_that_is_there() {
        type Damage = fn(&Path);
        let cases: [(&str, Damage); 3] = [
            ("damaged tls.crt", |d| {
                std::fs::write(d.join(TLS_CRT), "garbage").unwrap()
            }),
            ("missing tls.key", |d| {
                std::fs::remove_file(source_dir(d).join(TLS_KEY)).unwrap()
            }),
            ("tls.key of another pair", |d| {
                let other = KeyPair::generate().unwrap().serialize_pem();
                std::fs::write(d.join(TLS_KEY), other).unwrap();
            }),
        ];
        for (name, damage) in cases {
            let (dir, opts) = fresh();
            let ca = first_ca(dir.path());
            damage(dir.path());
            let (action, _) = ensure(dir.path(), &opts, SystemTime::now()).unwrap();
            assert!(
                matches!(action, Action::RepairedLeaf(_)),
                "{name}: {action:?}"
            );
            assert_eq!(first_ca(dir.path()), ca, "{name}: the CA is kept");
            let set = load(dir.path()).unwrap();
            validate(dir.path(), &set, SystemTime::now())
                .unwrap_or_else(|e| panic!("{name}: the repaired set is valid: {e}"));
        }
    }

    #[test]
    fn only_an_unusable_ca_is_replaced() {
        let (dir, opts) = fresh();
        let ca = first_ca(dir.path());
        std::fs::write(dir.path().join(TLS_CRT), "garbage").unwrap();
        std::fs::write(dir.path().join(CA_KEY), "not a key").unwrap();
        let (action, _) = ensure(dir.path(), &opts, SystemTime::now()).unwrap();
        match &action {
            Action::ReplacedCa(why) => assert!(why.contains(CA_KEY), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_ne!(first_ca(dir.path()), ca);
        let (action, _) = ensure(dir.path(), &opts, SystemTime::now()).unwrap();
        assert_eq!(action, Action::Kept, "the new set is whole");
    }

    #[test]
    fn a_write_that_fails_half_way_leaves_no_staged_folder() {
        let (dir, _) = fresh();
        let before: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // The swap's temporary link cannot be made: a folder holds its name.
        std::fs::create_dir(dir.path().join("..data_tmp")).unwrap();
        for _ in 0..20 {
            assert!(write_set(dir.path(), &[(CA_CRT, b"x", false)]).is_err());
        }
        let mut after: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        after.retain(|n| n != "..data_tmp");
        assert_eq!(after.len(), before.len(), "{after:?}");
        assert!(load(dir.path()).is_ok(), "the current set is untouched");
    }
}
