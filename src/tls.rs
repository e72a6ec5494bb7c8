//! rustls material shared by the PostgreSQL and the AMQPS connections: the
//! crypto provider, root certificates (a PEM CA file or the platform's
//! store), the client certificate and key, and the server certificate
//! verifiers.
//!
//! Knows nothing of either protocol: a failure comes back as a
//! [`LoadError`] naming the step and file, and each caller words it in its
//! own settings' names (`sslrootcert` for PostgreSQL, the CA file for
//! RabbitMQ).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WantsClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, SignatureScheme, WantsVerifier,
};

/// The crypto provider every TLS connection uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration builder with [`provider`] and the safe default
/// protocol versions.
///
/// # Errors
///
/// When the provider cannot do those versions.
pub fn builder() -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()
}

/// What failed while loading TLS files: the step, the file and the cause.
#[derive(Debug)]
pub enum LoadError {
    /// The CA file could not be read.
    CaRead(PathBuf, pem::Error),
    /// The CA file was read but is not PEM.
    CaNotPem(PathBuf, pem::Error),
    /// rustls refused a certificate of the CA file.
    CaRejected(PathBuf, rustls::Error),
    /// The client certificate file could not be read.
    CertRead(PathBuf, pem::Error),
    /// The client certificate file was read but is not PEM.
    CertNotPem(PathBuf, pem::Error),
    /// The client key could not be read (or the file holds none).
    KeyRead(PathBuf, pem::Error),
    /// rustls refused the client certificate and key.
    ClientAuth(rustls::Error),
    /// A client certificate without a key, or a key without a certificate.
    Unpaired,
}

/// The platform's root certificates; those rustls cannot use are skipped.
pub fn platform_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    roots
}

/// The root certificates of a PEM CA file.
///
/// # Errors
///
/// `CaRead`, `CaNotPem` or `CaRejected`.
pub fn file_roots(path: &Path) -> Result<RootCertStore, LoadError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| LoadError::CaRead(path.into(), e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::CaNotPem(path.into(), e))?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| LoadError::CaRejected(path.into(), e))?;
    }
    Ok(roots)
}

/// Finishes `builder` with the client certificate and key (PEM files), or
/// with no client authentication when neither is given.
///
/// # Errors
///
/// `CertRead`, `CertNotPem`, `KeyRead`, `ClientAuth`, or `Unpaired` when
/// only one of the two is given.
pub fn with_client_cert(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<ClientConfig, LoadError> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| LoadError::CertRead(cert.into(), e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| LoadError::CertNotPem(cert.into(), e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| LoadError::KeyRead(key.into(), e))?;
            builder.with_client_auth_cert(certs, key).map_err(LoadError::ClientAuth)
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(LoadError::Unpaired),
    }
}

/// A verifier that checks the chain against `roots`, and the host name only
/// when `check_name` (libpq's `verify-full` as opposed to `verify-ca`).
///
/// # Errors
///
/// When rustls cannot build a verifier from `roots` (none at all, ...).
pub fn chain_verifier(
    roots: RootCertStore,
    check_name: bool,
) -> Result<Arc<dyn ServerCertVerifier>, VerifierBuilderError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    Ok(Arc::new(Verifier { inner: Some(webpki), check_name }))
}

/// A verifier that accepts any certificate (encryption without
/// authentication: `sslmode=require`, RabbitMQ's `verify_none`).
pub fn no_verification() -> Arc<dyn ServerCertVerifier> {
    Arc::new(Verifier { inner: None, check_name: false })
}

/// Checks the chain (when `inner` is set) and the host name (when
/// `check_name`), or nothing at all.
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else { return Ok(ServerCertVerified::assertion()) };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
