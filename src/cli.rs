//! Command-line types (clap). No logic.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Relays transactional outbox rows from PostgreSQL logical replication to RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Preflight: validate the config, connect to both ends, report every problem with its fix.
    Check {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON document instead of text (schema: deploy/check.schema.json); the same exit codes.
        #[arg(long)]
        json: bool,
    },
    /// Create the publication and the replication slot if missing.
    Setup {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the SQL instead of running it (the default outbox table included).
        #[arg(long)]
        print_sql: bool,
    },
    /// After a lost slot: create a new slot, then re-publish from the outbox table every row that may not have been confirmed.
    Recover(ConfigArg),
    /// Re-publish a range of outbox rows (original message_id, header x-outbox-replay: true); the slot is untouched.
    Replay(ReplayArgs),
    /// Probe a running relay's /healthz (for container HEALTHCHECKs: exit 0 when healthy).
    Healthcheck {
        /// The relay's HTTP address (http.listen).
        #[arg(long, default_value = "127.0.0.1:9187", env = "OUTBOX_RELAY_HTTP")]
        addr: std::net::SocketAddr,
        /// Probe /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
}

/// `--config FILE`, defaulting to `OUTBOX_RELAY_CONFIG`.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The TOML configuration file.
    #[arg(long, short = 'c', env = "OUTBOX_RELAY_CONFIG")]
    pub config: PathBuf,
}

/// `replay`'s flags: where the range starts (exactly one of `--since` and
/// `--from-id`), where it ends, and how to publish it.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("start").required(true).args(["since", "from_id"]))]
pub struct ReplayArgs {
    /// The configuration file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Rows whose first source.order_by column is at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<String>,
    /// Rows at or after the row with this primary key, in source.order_by order.
    #[arg(long, value_name = "ID")]
    pub from_id: Option<String>,
    /// Rows whose first source.order_by column is at or before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub until: Option<String>,
    /// Publish only rows whose first matching route is this one.
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// At most N messages per second.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Count and render the rows per route; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}
