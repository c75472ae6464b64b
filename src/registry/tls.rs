//! The client's TLS settings: rustls (ring), TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1, the platform's trust roots plus `--ca-cert` files, an optional
//! client certificate, or no verification when explicitly asked.
//!
//! The platform's roots (`/etc/ssl/certs`, ~150 files) are read at the first
//! certificate check, not when the client is built: a plain-http registry
//! never needs them, and reading them with a cold page cache took ~25 ms of
//! a ~55 ms `regfs mount`. For an https registry they are loaded on a
//! background thread as soon as the client exists, so the first handshake
//! seldom waits.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// What the TLS configuration is built from.
#[derive(Debug, Default)]
pub(super) struct TlsSettings<'a> {
    /// PEM files of extra trusted CAs.
    pub ca_certs: &'a [std::path::PathBuf],
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
    /// PEM certificate chain and key to present.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// Start loading the platform roots now (the registry speaks https).
    pub preload_roots: bool,
}

/// The rustls configuration for a client built from `s`.
///
/// Errors: an unreadable or empty CA file, or an unusable client certificate
/// or key, is [`Error::Invalid`] naming the file.
pub(super) fn client_config(s: &TlsSettings<'_>) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("TLS: {e}")))?
        .dangerous();
    let roots = if s.insecure_skip_verify {
        None
    } else {
        let mut extra = Vec::new();
        for path in s.ca_certs {
            extra.extend(read_certs(path, "CA certificate")?);
        }
        Some(Roots {
            extra,
            verifier: OnceLock::new(),
        })
    };
    let check = Arc::new(ServerCheck { provider, roots });
    if s.preload_roots && check.roots.is_some() {
        let c = check.clone();
        let _ = std::thread::Builder::new()
            .name("regfs-tls-roots".into())
            .spawn(move || {
                let _ = c.verifier();
            });
    }
    let builder = builder.with_custom_certificate_verifier(check);
    let mut config = match s.client_cert {
        Some((cert, key)) => {
            let (chain, key_der) = read_identity(cert, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::invalid(format!(
                    "client certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates of the PEM file at `path` (at least one); `what` names
/// the file in errors (`CA certificate`, `client certificate`).
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn std::fmt::Display| Error::invalid(format!("{what} {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A client certificate chain and its private key, from PEM files.
fn read_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = read_certs(cert, "client certificate")?;
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid(format!("client certificate {}: {e}", key.display()))
    };
    let pem = std::fs::read(key).map_err(|e| bad(&e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(&e))?;
    Ok((chain, key_der))
}

/// The platform's roots and the extra CAs, read at the first certificate check.
#[derive(Debug)]
struct Roots {
    extra: Vec<CertificateDer<'static>>,
    verifier: OnceLock<std::result::Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

/// How server certificates are checked: against [`Roots`], or (`--insecure`,
/// no roots) not at all. Handshake signatures are always checked, so the peer
/// holds the key of the certificate it sent.
#[derive(Debug)]
struct ServerCheck {
    provider: Arc<CryptoProvider>,
    roots: Option<Roots>,
}

impl ServerCheck {
    /// The verifier built from the roots, loading them the first time;
    /// `None` when certificates are not checked.
    fn verifier(
        &self,
    ) -> std::result::Result<Option<&rustls_platform_verifier::Verifier>, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(None);
        };
        roots
            .verifier
            .get_or_init(|| {
                rustls_platform_verifier::Verifier::new_with_extra_roots(
                    roots.extra.iter().cloned(),
                    self.provider.clone(),
                )
            })
            .as_ref()
            .map(Some)
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.verifier()? {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    // Signatures need no roots: checked as the platform verifier does.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_wait_for_the_first_certificate_check() {
        let check = ServerCheck {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Some(Roots {
                extra: Vec::new(),
                verifier: OnceLock::new(),
            }),
        };
        let loaded = |c: &ServerCheck| c.roots.as_ref().unwrap().verifier.get().is_some();
        assert!(!check.supported_verify_schemes().is_empty());
        assert!(!loaded(&check), "nothing read before a certificate check");
        let _ = check.verifier();
        assert!(loaded(&check));
    }

    #[test]
    fn ca_files_without_certificates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"not a certificate\n").unwrap();
        let e = client_config(&TlsSettings {
            ca_certs: std::slice::from_ref(&empty),
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = client_config(&TlsSettings {
            ca_certs: &[missing],
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
