//! Reading certificates and private keys: PEM (many sections) or DER, inline or from a file.

use std::io::Read;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use super::error::{Result, TrustError};
use super::settings::Secret;

/// The largest certificate or key file we read (a full public CA bundle is about 200 KiB).
pub const MAX_MATERIAL_BYTES: u64 = 4 * 1024 * 1024;

/// Where a parameter's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The value itself (PEM text).
    Inline,
    /// A file.
    File(PathBuf),
}

/// Whether a parameter value is inline PEM rather than a path: PEM anywhere in it counts
/// (some tools write text before the first `-----BEGIN` line), and so does a value that
/// spans lines, which no file path does.
#[must_use]
pub fn is_inline(value: &str) -> bool {
    value.contains("-----BEGIN") || value.trim().contains('\n')
}

/// Which files a trigger's `ca`, `cert` and `key` may name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FileParams {
    /// Any file the process can read (the SDK's default, and `probe`, which runs as the
    /// user on the user's own files).
    #[default]
    Any,
    /// Only files under one of `allowed`, and never under one of `denied`, both compared
    /// after every symlink is resolved. An empty `allowed` refuses every path: the
    /// material must then come inline (from a Secret, as KEDA takes it).
    Under {
        /// Folders whose files may be named.
        allowed: Vec<PathBuf>,
        /// Folders whose files may never be named (the operator's own certificates).
        denied: Vec<PathBuf>,
    },
}

impl FileParams {
    /// Whether `path` may be read; `Err` says why not.
    fn check(&self, path: &Path) -> std::result::Result<(), String> {
        let FileParams::Under { allowed, .. } = self else {
            return Ok(());
        };
        if allowed.is_empty() {
            return Err(
                "file paths are not allowed here: give the PEM itself (from a Secret), or let the operator read a folder with --allow-file-params".into(),
            );
        }
        let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve: {e}"))?;
        self.check_real(&real)
    }

    /// Whether a resolved path (no symlinks left) may be read.
    fn check_real(&self, real: &Path) -> std::result::Result<(), String> {
        let FileParams::Under { allowed, denied } = self else {
            return Ok(());
        };
        let canon = |d: &PathBuf| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if denied.iter().map(canon).any(|d| real.starts_with(&d)) {
            return Err(
                "it resolves into the operator's own certificate folder, which no trigger may use"
                    .into(),
            );
        }
        if !allowed.iter().map(canon).any(|a| real.starts_with(&a)) {
            return Err(format!(
                "it is not under a folder allowed by --allow-file-params ({})",
                allowed
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }
}

/// Reads a parameter value: inline PEM as bytes, or the named file (size-capped), if
/// `files` allows it.
pub fn read_source(
    parameter: &'static str,
    value: &str,
    files: &FileParams,
) -> Result<(Source, Vec<u8>)> {
    if is_inline(value) {
        return Ok((Source::Inline, value.as_bytes().to_vec()));
    }
    let path = PathBuf::from(value.trim());
    files
        .check(&path)
        .map_err(|reason| TrustError::FileRefused {
            parameter,
            path: (parameter != "key").then(|| path.clone()),
            reason,
        })?;
    // Checked again on the file actually opened: a symlink swapped between the check and
    // the open cannot lead elsewhere.
    let opened_ok = |real: &Path| files.check_real(real);
    let bytes = read_capped_where(&path, MAX_MATERIAL_BYTES, &opened_ok).map_err(|source| {
        TrustError::ReadFile {
            parameter,
            // A key's value is never echoed, even when it was meant as a path: it may be the
            // key itself in a form we did not recognise.
            path: (parameter != "key").then(|| path.clone()),
            source,
        }
    })?;
    Ok((Source::File(path), bytes))
}

/// Reads a regular file, refusing one larger than `cap` bytes: the one way the project
/// reads a file a user named.
///
/// Anything but a regular file (a FIFO, a device, a directory, a socket; symlinks are
/// followed) is refused before it is opened, so that a FIFO cannot block the reader and
/// `/dev/zero` cannot fill memory; the opened file is checked again, so that a swap
/// between the check and the open is refused too.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    read_capped_where(path, cap, &|_| Ok(()))
}

/// [`read_capped`], refusing a file whose real path (that of the file opened, read back
/// from the kernel) `allow` refuses.
fn read_capped_where(
    path: &Path,
    cap: u64,
    allow: &dyn Fn(&Path) -> std::result::Result<(), String>,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let before = std::fs::metadata(path)?;
    if !before.is_file() {
        return Err(not_regular(&before));
    }
    // Non-blocking, so that a FIFO swapped in after the check cannot block the open (a
    // regular file ignores the flag).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let fd = {
        use std::os::fd::AsRawFd as _;
        file.as_raw_fd()
    };
    let real = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .or_else(|_| std::fs::canonicalize(path))?;
    allow(&real)
        .map_err(|reason| std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason))?;
    let meta = file.metadata()?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(not_regular(&meta));
    }
    let len = meta.len();
    if len > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is {len} bytes, larger than the {cap}-byte limit"),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file grew past the {cap}-byte limit while being read"),
        ));
    }
    Ok(out)
}

fn not_regular(meta: &std::fs::Metadata) -> std::io::Error {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    )
}

/// What a blob of certificate material held.
#[derive(Debug, Default)]
pub struct ParsedCerts {
    /// The certificates, in order.
    pub certs: Vec<CertificateDer<'static>>,
    /// Labels of PEM sections that are private keys.
    pub private_keys: Vec<String>,
    /// Labels of PEM sections that are neither certificates nor keys.
    pub other_sections: Vec<String>,
}

/// Whether the bytes look like PEM text.
fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

/// The labels of every `-----BEGIN X-----` line, in order.
fn pem_labels(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("-----BEGIN ")?;
            Some(rest.strip_suffix("-----")?.to_string())
        })
        .collect()
}

/// Parses every certificate in PEM (any number of sections) or a single DER certificate.
///
/// Private keys and other sections are reported, not silently dropped; a broken PEM
/// section is an error whose text says what is wrong.
pub fn parse_certificates(bytes: &[u8]) -> std::result::Result<ParsedCerts, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("empty file".into());
    }
    if !looks_like_pem(bytes) {
        return match x509_parser::parse_x509_certificate(bytes) {
            Ok(([], _)) => Ok(ParsedCerts {
                certs: vec![CertificateDer::from(bytes.to_vec())],
                ..Default::default()
            }),
            Ok(_) => Err("DER certificate followed by trailing bytes".into()),
            Err(_) => Err("neither PEM nor a DER certificate".into()),
        };
    }
    let mut out = ParsedCerts::default();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| describe_pem_error(&e))?;
        match kind {
            SectionKind::Certificate => {
                x509_parser::parse_x509_certificate(&der).map_err(|e| {
                    format!("certificate {} is malformed: {e}", out.certs.len() + 1)
                })?;
                out.certs.push(CertificateDer::from(der));
            }
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                out.private_keys.push(format!("{kind:?}"));
            }
            other => out.other_sections.push(format!("{other:?}")),
        }
    }
    // Sections rustls-pki-types does not know (encrypted keys, OpenSSL's TRUSTED
    // CERTIFICATE, ...) are skipped by its iterator: find them by label.
    for label in pem_labels(bytes) {
        if label.contains("PRIVATE KEY")
            && !matches!(
                label.as_str(),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
            )
        {
            out.private_keys.push(label);
        } else if !matches!(
            label.as_str(),
            "CERTIFICATE"
                | "PRIVATE KEY"
                | "RSA PRIVATE KEY"
                | "EC PRIVATE KEY"
                | "PUBLIC KEY"
                | "X509 CRL"
                | "CERTIFICATE REQUEST"
                | "ECH CONFIGS"
        ) {
            out.other_sections.push(label);
        }
    }
    Ok(out)
}

fn describe_pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "truncated PEM: no {:?} line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM line {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(msg) => format!("bad base64 in PEM: {msg}"),
        other => format!("unreadable PEM: {other}"),
    }
}

/// Parses the certificates of a parameter (`ca`, `cert`), requiring at least one and
/// refusing private keys mixed in.
pub fn certificates_for(
    parameter: &'static str,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>> {
    let parsed = parse_certificates(bytes)
        .map_err(|reason| TrustError::BadMaterial { parameter, reason })?;
    if parsed.certs.is_empty() {
        return Err(TrustError::BadMaterial {
            parameter,
            reason: if parsed.private_keys.is_empty() {
                "no certificate found".into()
            } else {
                "holds a private key but no certificate".into()
            },
        });
    }
    Ok(parsed.certs)
}

/// Parses a private key: PKCS#8, PKCS#1 (RSA), SEC1 (EC), or encrypted PKCS#8 with a
/// password; PEM or DER.
pub fn private_key(bytes: &[u8], password: Option<&Secret>) -> Result<PrivateKeyDer<'static>> {
    let bad = |reason: String| TrustError::BadMaterial {
        parameter: "key",
        reason,
    };
    if !looks_like_pem(bytes) {
        if let Ok(key) = PrivateKeyDer::try_from(bytes.to_vec()) {
            return Ok(key);
        }
        if let Some(pw) = password {
            return decrypt_pkcs8(bytes, pw);
        }
        return Err(bad("neither PEM nor a DER private key".into()));
    }
    let text = String::from_utf8_lossy(bytes);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            "legacy OpenSSL-encrypted PEM (Proc-Type: 4,ENCRYPTED) is not supported; convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc` and set keyPassword".into(),
        ));
    }
    if pem_labels(bytes)
        .iter()
        .any(|l| l == "ENCRYPTED PRIVATE KEY")
    {
        let Some(pw) = password else {
            return Err(bad("the key is encrypted but keyPassword is not set".into()));
        };
        let (_, doc) = pkcs8::SecretDocument::from_pem(text.trim())
            .map_err(|e| bad(format!("encrypted PKCS#8 PEM is malformed: {e}")))?;
        return decrypt_pkcs8(doc.as_bytes(), pw);
    }
    if password.is_some() {
        tracing::warn!("keyPassword is set but the key is not encrypted; the password is ignored");
    }
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| bad(describe_pem_error(&e)))?;
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            _ => continue,
        };
        return Ok(key);
    }
    Err(bad("no private key found".into()))
}

fn decrypt_pkcs8(der: &[u8], password: &Secret) -> Result<PrivateKeyDer<'static>> {
    let bad = |reason: String| TrustError::BadMaterial {
        parameter: "keyPassword",
        reason,
    };
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der)
        .map_err(|e| bad(format!("the key is not encrypted PKCS#8: {e}")))?;
    let doc = info
        .decrypt(password.expose().as_bytes())
        .map_err(|_| bad("cannot decrypt the key: wrong password or unsupported cipher".into()))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        doc.as_bytes().to_vec(),
    )))
}

/// Encodes certificates as PEM text.
#[must_use]
pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for cert in certs {
        out.push_str(&pem_encode("CERTIFICATE", cert.as_ref()));
    }
    out
}

/// Encodes one DER blob as a PEM section.
#[must_use]
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64_engine::encode;
    let b64 = encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

mod base64_engine {
    use base64::Engine as _;
    pub fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem() -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), cert.der().to_vec())
    }

    #[test]
    fn a_bundle_of_three_certificates_parses() {
        let pems: String = (0..3).map(|_| cert_pem().0).collect();
        assert_eq!(parse_certificates(pems.as_bytes()).unwrap().certs.len(), 3);
    }

    #[test]
    fn a_der_certificate_parses() {
        let (_, der) = cert_pem();
        assert_eq!(parse_certificates(&der).unwrap().certs.len(), 1);
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let (pem, _) = cert_pem();
        let truncated = &pem[..pem.len() - 30];
        let cases: [(&str, &[u8], &str); 4] = [
            ("empty", b"  \n", "empty"),
            (
                "garbage",
                b"hello world, not a certificate",
                "neither PEM nor",
            ),
            ("truncated", truncated.as_bytes(), "truncated PEM"),
            (
                "bad base64",
                b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
                "base64",
            ),
        ];
        for (name, input, want) in cases {
            let err = parse_certificates(input).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn private_keys_are_found_even_when_encrypted() {
        let key = rcgen::KeyPair::generate().unwrap();
        let parsed = parse_certificates(key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(parsed.private_keys.len(), 1);
        let enc =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let parsed = parse_certificates(enc).unwrap();
        assert_eq!(
            parsed.private_keys,
            vec!["ENCRYPTED PRIVATE KEY".to_string()]
        );
    }

    #[test]
    fn pem_round_trips() {
        let (_, der) = cert_pem();
        let pem = certs_to_pem([&CertificateDer::from(der.clone())]);
        assert_eq!(
            parse_certificates(pem.as_bytes()).unwrap().certs[0].as_ref(),
            &der[..]
        );
    }

    #[test]
    fn keys_of_every_plain_encoding_load() {
        let key = rcgen::KeyPair::generate().unwrap();
        assert!(matches!(
            private_key(key.serialize_pem().as_bytes(), None).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert!(matches!(
            private_key(&key.serialize_der(), None).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        let err = private_key(
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
    }
}

#[cfg(test)]
mod properties {
    //! Whatever bytes a file or a parameter holds, reading it gives a result or an error,
    //! never a panic, and a key's error never holds the key. `PROPTEST_CASES=N` runs more.
    use proptest::prelude::*;

    use super::*;

    fn pemish() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            ("[A-Z ]{0,20}", "[A-Za-z0-9+/=\n]{0,600}").prop_map(|(label, body)| {
                format!("junk\n-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
                    .into_bytes()
            }),
            "[A-Za-z0-9+/=\n-]{0,800}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn parsing_certificates_never_panics(bytes in pemish()) {
            let _ = parse_certificates(&bytes);
            let _ = certificates_for("ca", &bytes);
        }

        #[test]
        fn parsing_keys_never_panics_or_echoes_the_key(bytes in pemish(), password in proptest::option::of("[a-z]{0,12}")) {
            let pw = password.map(Secret::new);
            if let Err(e) = private_key(&bytes, pw.as_ref()) {
                let text = e.to_string();
                let body = String::from_utf8_lossy(&bytes);
                // A long run of the input never reappears in the message.
                for chunk in body.split_whitespace().filter(|c| c.len() >= 24) {
                    prop_assert!(!text.contains(chunk), "{text}");
                }
            }
        }

        #[test]
        fn a_value_is_inline_or_a_path_and_reading_it_never_panics(value in "\\PC{0,200}") {
            let _ = read_source("ca", &value, &FileParams::Under { allowed: vec![], denied: vec![] });
        }
    }
}
