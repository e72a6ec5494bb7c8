//! The `outbox-relay` binary, thin: parse the command line, load the config,
//! set up logging, build the runtime, call the library, and exit with the code
//! [`outbox_relay::exit::code`] gives (0 done; 1 an error at run time, problems
//! found, an unhealthy relay; 2 an invalid configuration or usage; 3 the
//! replication slot is lost).

mod cli;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use outbox_relay::config::{self, Config, LogFormat};
use outbox_relay::exit::{self, Failure};
use outbox_relay::ErrorKind;

fn main() -> ExitCode {
    let result = match cli::Cli::parse().command {
        cli::Command::Run(config) => run(&config.config),
        cli::Command::Check { config, json: false } => check(&config.config),
        cli::Command::Check { config, json: true } => check_json(&config.config),
        cli::Command::Setup { config, print_sql: true } => print_sql(&config.config),
        cli::Command::Setup { config, print_sql: false } => setup(&config.config),
        cli::Command::Recover(config) => recover(&config.config),
        cli::Command::Replay(args) => replay(args),
        cli::Command::Healthcheck { addr, ready } => healthcheck(addr, ready),
    };
    ExitCode::from(exit::code(&result))
}

fn run(path: &Path) -> Result<(), Failure> {
    let cfg = load(path)?;
    init_logging(&cfg);
    let rt = runtime()?;
    match rt.block_on(outbox_relay::run(cfg, shutdown_signal())) {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e.chain(), kind = e.kind().as_str(), hint = e.kind().hint(), "stopping: this needs a person");
            Err(Failure::of(&e))
        }
    }
}

/// `check` reports everything, an invalid configuration included, on stdout.
fn check(path: &Path) -> Result<(), Failure> {
    let cfg = config::load(path, &config::process_env).map_err(|e| {
        println!("PROBLEM {}", exit::invalid_config(&e));
        Failure::Invalid
    })?;
    let rt = runtime()?;
    let report = rt.block_on(outbox_relay::check::run(&cfg));
    print!("{}", report.render());
    report.result()
}

/// `check --json`: one JSON document on stdout in every case (an invalid
/// configuration and a failure to start included); nothing else is
/// written to stdout (`check` sets up no logging).
fn check_json(path: &Path) -> Result<(), Failure> {
    use outbox_relay::check;
    let (doc, result) = match config::load(path, &config::process_env) {
        Err(e) => (check::config_error_json(path, &e), Err(Failure::Invalid)),
        Ok(cfg) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Err(e) => (check::failure_json(path, &format!("{:#}", anyhow::Error::from(e))), Err(Failure::Failed)),
            Ok(rt) => {
                let report = rt.block_on(check::run(&cfg));
                (report.to_json(path), report.result())
            }
        },
    };
    println!("{doc:#}");
    result
}

fn print_sql(path: &Path) -> Result<(), Failure> {
    print!("{}", outbox_relay::setup::print_sql(&load(path)?));
    Ok(())
}

/// Every error of `setup` exits 1, those of kind `Config` included.
fn setup(path: &Path) -> Result<(), Failure> {
    let cfg = load(path)?;
    init_logging(&cfg);
    let rt = runtime()?;
    let summary = rt.block_on(outbox_relay::setup::run(&cfg)).map_err(|e| {
        eprintln!("outbox-relay: {}\nhint: {}", e.chain(), e.kind().hint());
        Failure::Failed
    })?;
    println!("{summary}");
    Ok(())
}

/// `recover`: a new slot, then the rows that may not have been confirmed
/// re-published from the outbox table; SIGTERM stops it (run it again).
fn recover(path: &Path) -> Result<(), Failure> {
    let cfg = load(path)?;
    init_logging(&cfg);
    let rt = runtime()?;
    let result = rt.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            on_signal.cancel();
        });
        outbox_relay::recover::run(&cfg, &stop).await
    });
    match result {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(e) => {
            eprintln!("outbox-relay: {}\nhint: {}", e.chain(), e.kind().hint());
            Err(if e.kind() == ErrorKind::Config { Failure::Invalid } else { Failure::Failed })
        }
    }
}

/// The report on stdout; exit 1 when the range was not all replayed (a
/// stop, or rows a dry run cannot render), 2 for a bad selection.
fn replay(args: cli::ReplayArgs) -> Result<(), Failure> {
    let cfg = load(&args.config.config)?;
    init_logging(&cfg);
    let selection = outbox_relay::replay::Selection {
        since: args.since,
        from_id: args.from_id,
        until: args.until,
        route: args.route,
        rate: args.rate,
        dry_run: args.dry_run,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let report = runtime()?
        .block_on(async {
            let on_signal = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("stop requested: waiting for in-flight confirms");
                on_signal.cancel();
            });
            outbox_relay::replay::run(&cfg, &selection, stop.clone()).await
        })
        .map_err(|e| {
            eprintln!("outbox-relay replay: {}", e.chain());
            // Only the hints about reaching an end apply to a replay.
            if e.kind().end().is_some() {
                eprintln!("hint: {}", e.kind().hint());
            }
            if e.kind() == ErrorKind::Config {
                Failure::Invalid
            } else {
                Failure::Failed
            }
        })?;
    print!("{report}");
    if report.complete() {
        Ok(())
    } else {
        Err(Failure::Failed)
    }
}

fn healthcheck(addr: SocketAddr, ready: bool) -> Result<(), Failure> {
    match outbox_relay::healthcheck::probe(addr, outbox_relay::healthcheck::path(ready)) {
        Ok(body) => {
            println!("{body}");
            Ok(())
        }
        Err(e) => {
            eprintln!("outbox-relay healthcheck: {e}");
            Err(Failure::Failed)
        }
    }
}

/// The config file with its environment overrides; an invalid one is reported on stderr.
fn load(path: &Path) -> Result<Config, Failure> {
    config::load(path, &config::process_env).map_err(|e| {
        eprintln!("outbox-relay: {}", exit::invalid_config(&e));
        Failure::Invalid
    })
}

/// One thread: the pipeline is a handful of tasks that hand work to each
/// other many thousand times a second, and on one thread a hand-over is a
/// queue push, not a futex wake-up of another core (measured: the README's
/// benchmark section). The relay shares its machine with the database and
/// the broker, and one core is more than it needs.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("outbox-relay: {:#}", anyhow::Error::from(e));
        Failure::Failed
    })
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.log.level.as_str()));
    use std::io::IsTerminal;
    // Colours only on a terminal: journald and `docker logs` would show raw escapes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
