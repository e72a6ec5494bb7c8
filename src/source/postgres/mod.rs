//! PostgreSQL connection pieces: the target parsed from the connection
//! string (host, user, `sslmode` and the TLS files), SQL identifier and
//! literal quoting, TLS with libpq's `sslmode` semantics ([`tls`]), and the
//! ordinary SQL connection ([`PgTarget::connect_sql`]), and the socket and
//! session bounds that notice a dead connection ([`liveness`]). The
//! replication connection and the polling source build on these.

mod connect;
pub mod liveness;
mod target;
pub mod tls;

pub use liveness::Liveness;
pub use target::{quote_ident, quote_literal, PgTarget, SslMode};
