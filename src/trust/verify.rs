//! Verifier wrappers: verify against a configured name (`serverName`), and record the
//! chain a server presented (for `trust inspect`).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Verifies the server certificate against a fixed name, whatever host was dialled.
#[derive(Debug)]
pub(crate) struct FixedNameVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub name: ServerName<'static>,
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Remembers the chain the server presented, then defers to the real verifier.
#[derive(Debug)]
pub(crate) struct RecordingVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
            seen.push(end_entity.clone().into_owned());
            seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verifier for an empty anchor set: every certificate has an unknown issuer.
/// (rustls' WebPKI verifier refuses to be built without anchors; a missing CA folder and no
/// system roots is a legal, if useless, configuration that should fail at the handshake
/// with a clear reason.)
#[derive(Debug)]
pub(crate) struct NoAnchorsVerifier {
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoAnchorsVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Trusts a server that presents exactly one of the pinned certificates (certificates
/// of the CA folders or a trigger's `ca` that are not CAs), if it names the server and is
/// within its validity; everything else goes to the real verifier, where those
/// certificates are not anchors and so never issuers.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        ee.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            })?;
        let (_, x509) = x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let at = now.as_secs() as i64;
        let validity = x509.validity();
        if at > validity.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired,
            ));
        }
        if at < validity.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The trust a [`Following`] verifier uses now: a verifier and the anchors it was built
/// from.
pub(crate) struct Followed {
    pub verifier: Arc<dyn ServerCertVerifier>,
    pub anchors: Arc<super::anchors::Anchors>,
}

/// Names recorded past this many are not kept: the context is then treated as if every
/// anchor were in use.
const MAX_NAMES: usize = 256;

/// The verifier a context's rustls configuration holds: it verifies with the trust it
/// follows now, which moves to a newer anchor generation as long as the change cannot
/// alter a verification already made on a connection the context opened (no anchor that
/// could have ended one of those chains was removed). To answer that, it remembers the
/// issuer and subject names of every chain it accepted.
pub(crate) struct Following {
    now: arc_swap::ArcSwap<Followed>,
    /// Issuer and subject names (DER) of the certificates of accepted chains; `None`
    /// once more than [`MAX_NAMES`] were seen.
    names: Mutex<Option<std::collections::HashSet<Vec<u8>>>>,
    moving: Mutex<()>,
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following")
            .field("generation", &self.now.load().anchors.generation())
            .finish_non_exhaustive()
    }
}

impl Following {
    pub fn new(
        verifier: Arc<dyn ServerCertVerifier>,
        anchors: Arc<super::anchors::Anchors>,
    ) -> Self {
        Following {
            now: arc_swap::ArcSwap::from_pointee(Followed { verifier, anchors }),
            names: Mutex::new(Some(std::collections::HashSet::new())),
            moving: Mutex::new(()),
        }
    }

    /// The anchors verified against now.
    pub fn anchors(&self) -> Arc<super::anchors::Anchors> {
        Arc::clone(&self.now.load().anchors)
    }

    /// Moves to `to` unless an anchor of the trust followed now that `to` no longer has
    /// could have ended a chain this verifier accepted: then `None` (the connections
    /// opened so far must go: the caller makes a new client). Else the generation of the
    /// anchors followed now.
    ///
    /// The names stay locked until the move is made, and a handshake records its chain
    /// under the same lock, verifying again if the trust moved while it verified: so no
    /// chain is accepted by anchors that were left without being seen here.
    pub fn follow(&self, to: &Following) -> Option<u64> {
        let _one = self
            .moving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (from, to) = (self.now.load_full(), to.now.load_full());
        if Arc::ptr_eq(&from.anchors, &to.anchors) {
            return Some(from.anchors.generation());
        }
        let kept: std::collections::HashSet<&[u8]> = to
            .anchors
            .ders
            .iter()
            .chain(&to.anchors.pinned)
            .map(|c| c.as_ref())
            .collect();
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let in_use = |cert: &CertificateDer<'_>| match names.as_ref() {
            None => true,
            Some(names) => match x509_parser::parse_x509_certificate(cert.as_ref()) {
                Ok((_, x509)) => names.contains(x509.subject().as_raw()),
                Err(_) => true,
            },
        };
        let removed_in_use = from
            .anchors
            .ders
            .iter()
            .chain(&from.anchors.pinned)
            .filter(|c| !kept.contains(c.as_ref()))
            .any(in_use);
        if removed_in_use {
            return None;
        }
        let generation = to.anchors.generation();
        self.now.store(to);
        drop(names);
        Some(generation)
    }

    /// The verifier in force now (for a diagnostic handshake with the same trust).
    pub fn current(&self) -> Arc<dyn ServerCertVerifier> {
        Arc::clone(&self.now.load().verifier)
    }

    fn remember(
        names: &mut Option<std::collections::HashSet<Vec<u8>>>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) {
        let Some(set) = names.as_mut() else { return };
        let mut readable = true;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            match x509_parser::parse_x509_certificate(cert.as_ref()) {
                Ok((_, x509)) => {
                    for name in [x509.issuer().as_raw(), x509.subject().as_raw()] {
                        if !set.contains(name) {
                            set.insert(name.to_vec());
                        }
                    }
                }
                // Accepted yet unreadable here: assume every anchor is in use.
                Err(_) => readable = false,
            }
        }
        if !readable || set.len() > MAX_NAMES {
            *names = None;
        }
    }
}

impl ServerCertVerifier for Following {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let used = self.now.load_full();
        let first = used.verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The trust moved while this handshake verified: what counts is the trust in
        // force now (which no later move can leave without seeing this chain), whether
        // the first answer was yes or no.
        let current = self.now.load_full();
        let verified = if Arc::ptr_eq(&current, &used) {
            first?
        } else {
            current.verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?
        };
        Self::remember(&mut names, end_entity, intermediates);
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.now.load().verifier.supported_verify_schemes()
    }
}
