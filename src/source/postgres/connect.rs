//! Opening the ordinary (non-replication) SQL connection to a
//! [`PgTarget`], with TLS per its `sslmode`.

use std::time::Duration;

use super::target::{PgTarget, SslMode};
use super::tls::{client_config, MakeRustls};
use crate::error::{from_pg, Error, ErrorKind, Result};

impl PgTarget {
    /// Opens an ordinary SQL connection and spawns its driver task, with
    /// TCP keepalive, `TCP_USER_TIMEOUT` and `statement_timeout` from
    /// [`PgTarget::liveness`].
    ///
    /// # Errors
    ///
    /// Connection or authentication failures, with the endpoint and the
    /// server's own message.
    pub async fn connect_sql(&self, timeout: Duration) -> Result<tokio_postgres::Client> {
        let mut cfg = self.config.clone();
        cfg.connect_timeout(timeout);
        self.liveness.apply_to_config(&mut cfg);
        if cfg.get_application_name().is_none() {
            cfg.application_name("outbox-relay");
        }
        let timed_out = || {
            Error::new(
                ErrorKind::SourceConnection,
                format!("connecting to PostgreSQL at {} timed out after {timeout:?}", self.endpoint()),
            )
        };
        let failed = |e| {
            from_pg(
                ErrorKind::SourceConnection,
                format!("connecting to PostgreSQL at {} (sslmode {})", self.endpoint(), self.ssl_mode.as_str()),
                e,
            )
        };
        match client_config(self)? {
            None => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, conn) =
                    tokio::time::timeout(timeout + Duration::from_secs(1), cfg.connect(tokio_postgres::NoTls))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(failed)?;
                tokio::spawn(conn);
                Ok(client)
            }
            Some(tls) => {
                cfg.ssl_mode(if self.ssl_mode == SslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                let (client, conn) =
                    tokio::time::timeout(timeout + Duration::from_secs(1), cfg.connect(MakeRustls::new(tls)))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(failed)?;
                tokio::spawn(conn);
                Ok(client)
            }
        }
    }
}
