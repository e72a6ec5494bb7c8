//! TLS for the PostgreSQL connections, with libpq's `sslmode` semantics on
//! rustls:
//!
//! | sslmode | encryption | chain checked | host name checked |
//! | --- | --- | --- | --- |
//! | disable | no | - | - |
//! | prefer | if the server offers it | no | no |
//! | require | yes | no (unless `sslrootcert` is given, as libpq does) | no |
//! | verify-ca | yes | yes | no |
//! | verify-full | yes | yes | yes |
//!
//! Roots come from `sslrootcert` (a PEM file, or `system` for the
//! platform's store). A client certificate (`sslcert` + `sslkey`) is offered
//! when the server asks. Used by both the replication connection (which does
//! its own SSLRequest) and the ordinary tokio-postgres connection (through
//! [`MakeRustls`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::source::pgconfig::{PgTarget, SslMode};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `target`, or `None` for
/// `sslmode=disable`.
///
/// # Errors
///
/// `Config` naming the file that could not be read or parsed.
pub fn client_config(target: &PgTarget) -> Result<Option<Arc<ClientConfig>>> {
    let mode = target.ssl_mode;
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let cfg_err = |m: String| Error::new(ErrorKind::Config, format!("source url {}: {m}", target.redacted));
    let roots = match target.ssl_root_cert.as_deref() {
        Some("system") => {
            let mut roots = RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            Some(roots)
        }
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| cfg_err(format!("cannot read sslrootcert {path}: {e}")))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| cfg_err(format!("sslrootcert {path} is not PEM: {e}")))?;
            for c in certs {
                roots.add(c).map_err(|e| cfg_err(format!("sslrootcert {path}: {e}")))?;
            }
            Some(roots)
        }
        None => None,
    };
    let verify_chain =
        matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) || (mode == SslMode::Require && roots.is_some());
    if verify_chain && roots.is_none() {
        return Err(cfg_err(format!(
            "sslmode={} needs sslrootcert (a CA file, or \"system\" for the platform's roots)",
            if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
        )));
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(format!("TLS setup: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (verify_chain, roots) {
        (true, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| cfg_err(format!("TLS roots: {e}")))?;
            Arc::new(Verifier { inner: Some(webpki), check_name: mode == SslMode::VerifyFull })
        }
        _ => Arc::new(Verifier { inner: None, check_name: false }),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match (&target.ssl_cert, &target.ssl_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| cfg_err(format!("cannot read sslcert {cert}: {e}")))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| cfg_err(format!("sslcert {cert} is not PEM: {e}")))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| cfg_err(format!("cannot read sslkey {key}: {e}")))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| cfg_err(format!("sslcert/sslkey: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(cfg_err("sslcert and sslkey go together".into())),
    };
    Ok(Some(Arc::new(config)))
}

/// Checks the chain (when `inner` is set) and the host name (when
/// `check_name`), or nothing at all (`sslmode=prefer/require` without roots).
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
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A verifier that accepts any certificate (encryption without
/// authentication: `sslmode=require`, RabbitMQ's `verify_none`).
pub fn no_verification() -> Arc<dyn ServerCertVerifier> {
    Arc::new(Verifier { inner: None, check_name: false })
}

/// The server name for SNI and verification: the host, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::new(ErrorKind::Config, format!("{host:?} is not a valid TLS server name: {e}")))
}

/// The `tls-server-end-point` channel binding data (RFC 5929): a hash of the
/// server's certificate, SHA-256 for the usual signature algorithms.
pub fn tls_server_end_point(cert: &CertificateDer<'_>) -> Vec<u8> {
    use ring::digest;
    digest::digest(&digest::SHA256, cert.as_ref()).as_ref().to_vec()
}

/// tokio-postgres's TLS hook, on rustls.
#[derive(Clone, Debug)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// From a client configuration built by [`client_config`].
    pub fn new(config: Arc<ClientConfig>) -> Self {
        MakeRustls { config }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name =
            ServerName::try_from(domain.to_owned()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect { config: self.config.clone(), name })
    }
}

/// One TLS handshake for tokio-postgres.
#[derive(Debug)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tokio_postgres::tls::TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(RustlsStream(s))
        })
    }
}

/// A TLS stream handed to tokio-postgres.
#[derive(Debug)]
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(tls_server_end_point(cert)),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
