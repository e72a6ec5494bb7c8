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
    Check(ConfigArg),
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
