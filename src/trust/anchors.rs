//! Trust anchors: the system roots merged with every certificate of the custom CA folders.
//!
//! Bad input never stops a load: each file gets a [`FileReport`] with its status and reason,
//! and what is good still loads.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{Result, TrustError};
use super::material::{self, parse_certificates};

/// The default custom CA folder, as in KEDA.
pub const DEFAULT_CA_DIR: &str = "/custom/ca";

/// The status of one file of a CA folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    /// Every certificate in it was loaded (some may have been duplicates).
    Loaded,
    /// Some certificates loaded; others were refused (see the reason).
    Partial,
    /// Nothing in it was loaded (see the reason).
    Rejected,
}

/// What became of one file of a CA folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileReport {
    /// The file, as found in its folder.
    pub path: PathBuf,
    /// Loaded, partial or rejected.
    pub status: FileStatus,
    /// Certificates from this file now in the anchors (duplicates not counted).
    pub certificates: usize,
    /// Why something was refused; `None` when all is well.
    pub reason: Option<String>,
    /// Subjects of the certificates loaded from it.
    pub subjects: Vec<String>,
}

/// What became of one CA folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderReport {
    /// The folder.
    pub path: PathBuf,
    /// Whether it exists (a missing folder is not an error).
    pub present: bool,
}

/// The system roots, read once per factory.
#[derive(Debug, Default)]
pub(crate) struct SystemRoots {
    pub certs: Vec<CertificateDer<'static>>,
    /// Problems reading the platform store.
    pub errors: Vec<String>,
    /// System certificates that could not become trust anchors.
    pub unparsable: usize,
}

impl SystemRoots {
    pub fn load() -> SystemRoots {
        let result = rustls_native_certs::load_native_certs();
        let errors: Vec<String> = result.errors.iter().map(ToString::to_string).collect();
        for e in &errors {
            tracing::warn!(error = %e, "problem reading the system root certificates");
        }
        SystemRoots {
            certs: result.certs,
            errors,
            unparsable: 0,
        }
    }
}

/// One immutable set of trust anchors. A reload makes a new one with a higher generation.
#[derive(Debug)]
pub struct Anchors {
    pub(crate) roots: Arc<RootCertStore>,
    /// Every anchor certificate, deduplicated, system roots first.
    pub(crate) ders: Vec<CertificateDer<'static>>,
    /// Certificates of the CA folders that are not CAs (`CA:FALSE`): never issuers; a
    /// server presenting exactly one of them is trusted as itself.
    pub(crate) pinned: Vec<CertificateDer<'static>>,
    pub(crate) generation: u64,
    system_count: usize,
    system_unparsable: usize,
    system_errors: Vec<String>,
    custom_count: usize,
    pub(crate) folders: Vec<FolderReport>,
    pub(crate) files: Vec<FileReport>,
    digest: [u8; 32],
    loaded_at: SystemTime,
    pem_bundle: OnceLock<Arc<str>>,
}

impl Anchors {
    /// The rustls root store.
    #[must_use]
    pub fn root_store(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }
    /// Increases with every successful reload.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Anchors from the system store.
    #[must_use]
    pub fn system_count(&self) -> usize {
        self.system_count
    }
    /// System certificates that could not be used as anchors.
    #[must_use]
    pub fn system_unparsable(&self) -> usize {
        self.system_unparsable
    }
    /// Problems met reading the platform's root store (not fatal).
    #[must_use]
    pub fn system_errors(&self) -> &[String] {
        &self.system_errors
    }
    /// Anchors from the custom CA folders (not counting duplicates of system roots).
    #[must_use]
    pub fn custom_count(&self) -> usize {
        self.custom_count
    }
    /// All anchors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.roots.len()
    }
    /// Whether there are no anchors at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
    /// The CA folders consulted.
    #[must_use]
    pub fn folders(&self) -> &[FolderReport] {
        &self.folders
    }
    /// Every file of every CA folder, with what became of it.
    #[must_use]
    pub fn files(&self) -> &[FileReport] {
        &self.files
    }
    /// Files from which nothing, or not everything, was loaded.
    pub fn problems(&self) -> impl Iterator<Item = &FileReport> {
        self.files.iter().filter(|f| f.status != FileStatus::Loaded)
    }
    /// When this set was read.
    #[must_use]
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
    /// A digest of the anchor certificates, independent of the generation.
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
    /// Every anchor as one PEM bundle (for clients that take PEM, such as librdkafka),
    /// the pinned non-CA certificates last.
    #[must_use]
    pub fn pem_bundle(&self) -> Arc<str> {
        Arc::clone(self.pem_bundle.get_or_init(|| {
            Arc::from(material::certs_to_pem(self.ders.iter().chain(&self.pinned)))
        }))
    }

    /// Certificates of the CA folders that are not CAs (`CA:FALSE`), trusted only as the
    /// exact certificate a server presents, never as an issuer.
    #[must_use]
    pub fn pinned(&self) -> &[CertificateDer<'static>] {
        &self.pinned
    }
    /// The anchor certificates.
    #[must_use]
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.ders
    }

    /// A short description for error messages: how many anchors from where.
    #[must_use]
    pub fn describe(&self) -> String {
        let folders: Vec<String> = self
            .folders
            .iter()
            .map(|f| {
                if f.present {
                    f.path.display().to_string()
                } else {
                    format!("{} (missing)", f.path.display())
                }
            })
            .collect();
        let folders = if folders.is_empty() {
            "no CA folders".to_string()
        } else {
            folders.join(", ")
        };
        format!(
            "{} anchors: {} system roots + {} from {}",
            self.len(),
            self.system_count,
            self.custom_count,
            folders
        )
    }
}

/// Options for reading CA folders.
#[derive(Clone, Debug)]
pub(crate) struct LoadOptions {
    pub folders: Vec<PathBuf>,
    pub max_file_bytes: u64,
}

/// Reads the CA folders and merges them with the system roots.
///
/// A folder that exists but cannot be listed fails the whole load, so that a caller can
/// keep its last good anchors; every problem with a single file is reported and skipped.
pub(crate) fn load(system: &SystemRoots, opts: &LoadOptions, generation: u64) -> Result<Anchors> {
    let mut roots = RootCertStore::empty();
    let mut ders = Vec::new();
    let mut pinned = Vec::new();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();

    let mut system_unparsable = system.unparsable;
    for cert in &system.certs {
        if !seen.insert(sha256(cert)) {
            continue;
        }
        if roots.add(cert.clone()).is_ok() {
            ders.push(cert.clone());
        } else {
            system_unparsable += 1;
        }
    }
    let system_count = roots.len();
    if system_unparsable > 0 {
        tracing::warn!(
            count = system_unparsable,
            "system root certificates could not be used as trust anchors"
        );
    }

    let mut folders = Vec::new();
    let mut files = Vec::new();
    for folder in &opts.folders {
        let entries = match fs::read_dir(folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                folders.push(FolderReport {
                    path: folder.clone(),
                    present: false,
                });
                continue;
            }
            Err(source) => {
                return Err(TrustError::CaFolder {
                    path: folder.clone(),
                    source,
                });
            }
        };
        folders.push(FolderReport {
            path: folder.clone(),
            present: true,
        });
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TrustError::CaFolder {
                path: folder.clone(),
                source,
            })?;
            let name = entry.file_name();
            // Kubernetes' atomic writer keeps `..data` and `..<timestamp>` beside the
            // visible names, which are symlinks through `..data`.
            if name.to_string_lossy().starts_with("..") {
                continue;
            }
            names.push(entry.path());
        }
        names.sort();
        for path in names {
            if let Some(report) = load_file(
                &path,
                opts.max_file_bytes,
                &mut roots,
                &mut ders,
                &mut pinned,
                &mut seen,
            ) {
                files.push(report);
            }
        }
    }
    let custom_count = roots.len() - system_count;
    let digest = {
        let mut sorted: Vec<[u8; 32]> = ders.iter().map(sha256).collect();
        // A pin is trust too: adding one is a change of trust.
        sorted.extend(pinned.iter().map(|p| {
            let mut d = sha256(p);
            d[0] ^= 0xff;
            d
        }));
        sorted.sort_unstable();
        let mut h = Sha256::new();
        for d in sorted {
            h.update(d);
        }
        h.finalize().into()
    };
    Ok(Anchors {
        roots: Arc::new(roots),
        ders,
        pinned,
        generation,
        system_count,
        system_unparsable,
        system_errors: system.errors.clone(),
        custom_count,
        folders,
        files,
        digest,
        loaded_at: SystemTime::now(),
        pem_bundle: OnceLock::new(),
    })
}

fn sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// Loads one entry of a CA folder; `None` for entries that are silently skipped
/// (directories).
fn load_file(
    path: &Path,
    cap: u64,
    roots: &mut RootCertStore,
    ders: &mut Vec<CertificateDer<'static>>,
    pinned: &mut Vec<CertificateDer<'static>>,
    seen: &mut HashSet<[u8; 32]>,
) -> Option<FileReport> {
    let rejected = |reason: String| {
        Some(FileReport {
            path: path.to_path_buf(),
            status: FileStatus::Rejected,
            certificates: 0,
            reason: Some(reason),
            subjects: Vec::new(),
        })
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return rejected("dangling symlink: its target does not exist".into());
        }
        Err(e) => return rejected(format!("cannot read: {e}")),
    };
    if meta.is_dir() {
        tracing::debug!(path = %path.display(), "skipping a directory in a CA folder");
        return None;
    }
    if !meta.is_file() {
        return rejected("not a regular file".into());
    }
    if meta.len() > cap {
        return rejected(format!(
            "file is {} bytes, larger than the {cap}-byte limit",
            meta.len()
        ));
    }
    let bytes = match material::read_capped(path, cap) {
        Ok(b) => b,
        Err(e) => return rejected(format!("cannot read: {e}")),
    };
    let parsed = match parse_certificates(&bytes) {
        Ok(p) => p,
        Err(reason) => return rejected(reason),
    };
    if !parsed.private_keys.is_empty() {
        return rejected(format!(
            "holds a private key ({}); a CA folder must hold only certificates, so nothing from this file is trusted",
            parsed.private_keys.join(", ")
        ));
    }
    if parsed.certs.is_empty() {
        return rejected(if parsed.other_sections.is_empty() {
            "no certificate found".into()
        } else {
            format!(
                "no certificate found (sections: {})",
                parsed.other_sections.join(", ")
            )
        });
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut problems = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut subjects = Vec::new();
    let mut added = 0;
    let total = parsed.certs.len();
    for (i, cert) in parsed.certs.into_iter().enumerate() {
        let label = if total > 1 {
            format!("certificate {}: ", i + 1)
        } else {
            String::new()
        };
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            problems.push(format!("{label}malformed"));
            continue;
        };
        let subject = x509.subject().to_string();
        let validity = x509.validity();
        if validity.not_after.timestamp() < now {
            problems.push(format!(
                "{label}{subject} expired at {}",
                validity.not_after
            ));
            continue;
        }
        if validity.not_before.timestamp() > now {
            problems.push(format!(
                "{label}{subject} is not valid before {}",
                validity.not_before
            ));
            continue;
        }
        if !seen.insert(sha256(&cert)) {
            subjects.push(subject);
            continue;
        }
        if is_ca(&x509) == Some(false) {
            notes.push(format!(
                "{label}{subject} is not a CA (CA:FALSE): it is trusted as the exact certificate a server presents, never as the issuer of another"
            ));
            pinned.push(cert);
            added += 1;
            subjects.push(subject);
            continue;
        }
        match roots.add(cert.clone()) {
            Ok(()) => {
                ders.push(cert);
                added += 1;
                subjects.push(subject);
            }
            Err(e) => problems.push(format!("{label}{subject} cannot be a trust anchor: {e}")),
        }
    }
    let status = match (problems.is_empty(), subjects.is_empty()) {
        (true, _) => FileStatus::Loaded,
        (false, false) => FileStatus::Partial,
        (false, true) => FileStatus::Rejected,
    };
    problems.extend(notes);
    Some(FileReport {
        path: path.to_path_buf(),
        status,
        certificates: added,
        reason: (!problems.is_empty()).then(|| problems.join("; ")),
        subjects,
    })
}

/// Whether a certificate says it is a CA: `Some(false)` for `CA:FALSE` (or basic
/// constraints without the CA flag), `None` when it has no basic constraints (X.509 v1,
/// which OpenSSL also treats as a CA when it is a trust anchor).
pub(crate) fn is_ca(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<bool> {
    match cert.basic_constraints() {
        Ok(Some(bc)) => Some(bc.value.ca),
        Ok(None) => None,
        // Unparsable or duplicated: not something to trust as an issuer.
        Err(_) => Some(false),
    }
}

/// Splits a trigger's `ca` certificates into issuers and pins (certificates that are not
/// CAs, trusted only as themselves), as the CA folders are split.
pub(crate) fn split_pins(
    certs: Vec<CertificateDer<'static>>,
) -> (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
    certs.into_iter().partition(|c| {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map(|(_, x)| is_ca(&x) != Some(false))
            .unwrap_or(true)
    })
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a CA folder holds, a load reports every file (loaded, partial or
        /// rejected, with a reason when not loaded) and never panics.
        #[test]
        fn every_file_of_a_ca_folder_gets_a_report(
            files in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..600),
                    "(-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]{0,300}\n-----END CERTIFICATE-----\n){1,3}".prop_map(String::into_bytes),
                ],
                0..6,
            ),
        ) {
            let dir = std::env::temp_dir().join(format!("trustscale-prop-{}-{:x}", std::process::id(), fastrand::u64(..)));
            std::fs::create_dir_all(&dir).unwrap();
            for (i, bytes) in files.iter().enumerate() {
                std::fs::write(dir.join(format!("f{i}.pem")), bytes).unwrap();
            }
            let opts = LoadOptions { folders: vec![dir.clone()], max_file_bytes: 4096 };
            let anchors = load(&SystemRoots::default(), &opts, 1).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            prop_assert_eq!(anchors.files().len(), files.len());
            for f in anchors.files() {
                prop_assert!(f.status == FileStatus::Loaded || f.reason.is_some(), "{:?}", f);
            }
        }
    }
}
