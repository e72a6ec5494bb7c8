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
//! when the server asks. The files are loaded by [`crate::tls`]. Used by both
//! the replication connection (which does its own SSLRequest) and the
//! ordinary tokio-postgres connection (through [`MakeRustls`]).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::target::{PgTarget, SslMode};
use crate::error::{Error, ErrorKind, Result};
use crate::tls::{self as material, LoadError};

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
        Some("system") => Some(material::platform_roots()),
        Some(path) => Some(material::file_roots(Path::new(path)).map_err(|e| cfg_err(describe(e)))?),
        None => None,
    };
    let verify_chain =
        matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) || (mode == SslMode::Require && roots.is_some());
    if verify_chain && roots.is_none() {
        return Err(cfg_err(format!(
            "sslmode={} needs sslrootcert (a CA file, or \"system\" for the platform's roots)",
            mode.as_str()
        )));
    }
    let builder = material::builder().map_err(|e| cfg_err(format!("TLS setup: {e}")))?;
    let verifier = match roots.filter(|_| verify_chain) {
        Some(roots) => material::chain_verifier(roots, mode == SslMode::VerifyFull)
            .map_err(|e| cfg_err(format!("TLS roots: {e}")))?,
        None => material::no_verification(),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let cert = target.ssl_cert.as_deref().map(Path::new);
    let key = target.ssl_key.as_deref().map(Path::new);
    let config = material::with_client_cert(builder, cert, key).map_err(|e| cfg_err(describe(e)))?;
    Ok(Some(Arc::new(config)))
}

/// Words a loading failure with libpq's parameter names.
fn describe(e: LoadError) -> String {
    match e {
        LoadError::CaRead(path, e) => format!("cannot read sslrootcert {}: {e}", path.display()),
        LoadError::CaNotPem(path, e) => format!("sslrootcert {} is not PEM: {e}", path.display()),
        LoadError::CaRejected(path, e) => format!("sslrootcert {}: {e}", path.display()),
        LoadError::CertRead(path, e) => format!("cannot read sslcert {}: {e}", path.display()),
        LoadError::CertNotPem(path, e) => format!("sslcert {} is not PEM: {e}", path.display()),
        LoadError::KeyRead(path, e) => format!("cannot read sslkey {}: {e}", path.display()),
        LoadError::ClientAuth(e) => format!("sslcert/sslkey: {e}"),
        LoadError::Unpaired => "sslcert and sslkey go together".into(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(params: &str) -> String {
        client_config(&PgTarget::parse(&format!("postgres://u@h/db?{params}")).unwrap()).unwrap_err().to_string()
    }

    #[test]
    fn tls_file_problems_name_the_libpq_parameter() {
        assert_eq!(
            problem("sslmode=verify-ca"),
            "source url postgres://u@h/db?sslmode=verify-ca: sslmode=verify-ca needs sslrootcert \
             (a CA file, or \"system\" for the platform's roots)"
        );
        assert!(problem("sslmode=require&sslrootcert=/nonexistent/ca.pem")
            .contains(": cannot read sslrootcert /nonexistent/ca.pem: "));
        assert!(problem("sslcert=/nonexistent/c.pem").ends_with(": sslcert and sslkey go together"));
        assert!(problem("sslcert=/nonexistent/c.pem&sslkey=/nonexistent/k.pem")
            .contains(": cannot read sslcert /nonexistent/c.pem: "));
        assert!(client_config(&PgTarget::parse("postgres://u@h/db?sslmode=disable").unwrap()).unwrap().is_none());
    }
}
