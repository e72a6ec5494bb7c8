//! The `outbox-relay` binary: parse the command line, load the config, set
//! up logging, build the runtime, run, and map the outcome to an exit code
//! (0 clean stop, 1 error at run time, 2 invalid configuration or usage).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use outbox_relay::config::{self, Config, LogFormat};
use outbox_relay::ErrorKind;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match try_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outbox-relay: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path, &config::process_env).map_err(|e| {
        eprintln!("outbox-relay: invalid configuration\n{e}");
        ExitCode::from(2)
    })
}

fn try_main(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Check(config) => {
            let cfg = match config::load(&config.config, &config::process_env) {
                Ok(c) => c,
                Err(e) => {
                    println!("PROBLEM invalid configuration\n{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let report = rt.block_on(outbox_relay::check::run(&cfg));
            print!("{}", report.render());
            Ok(if report.problems() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        cli::Command::Healthcheck { addr, ready } => Ok(healthcheck(addr, if ready { "/readyz" } else { "/healthz" })),
        cli::Command::Setup { config, print_sql: true } => {
            let cfg = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print!("{}", outbox_relay::setup::print_sql(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Setup { config, print_sql: false } => {
            let cfg = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(&cfg);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async {
                let target = outbox_relay::source::postgres::PgTarget::parse(
                    outbox_relay::config::current_url(config::UrlTarget::Source, &cfg.source.url)?.expose(),
                )?;
                let sql = target.connect_sql(cfg.source.connect_timeout).await?;
                let router = outbox_relay::route::Router::new(&cfg.routes);
                let report = outbox_relay::setup::ensure(&sql, &cfg, &router).await?;
                println!(
                    "publication {:?}: {}; slot {:?}: {}",
                    cfg.source.publication,
                    if report.created_publication {
                        "created".to_owned()
                    } else if report.added_tables.is_empty() {
                        "exists".to_owned()
                    } else {
                        format!("added {}", report.added_tables.join(", "))
                    },
                    cfg.source.slot,
                    if report.created_slot { "created" } else { "exists" },
                );
                Ok::<_, outbox_relay::Error>(())
            })
            .map_err(|e| anyhow::anyhow!("{}\nhint: {}", e.chain(), e.kind().hint()))?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Run(config) => {
            let cfg = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(&cfg);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = rt.block_on(outbox_relay::run(cfg, shutdown_signal()));
            match result {
                Ok(()) => {
                    tracing::info!("stopped cleanly");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    tracing::error!(error = %e.chain(), kind = e.kind().as_str(), hint = e.kind().hint(), "stopping: this needs a person");
                    Ok(ExitCode::from(if e.kind() == ErrorKind::Config { 2 } else { 1 }))
                }
            }
        }
    }
}

/// GET `path` on `addr` with a plain blocking socket (the runtime image has
/// no curl); exit 0 on HTTP 200.
fn healthcheck(addr: std::net::SocketAddr, path: &str) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.take(64 * 1024).read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(text) if text.starts_with("HTTP/1.1 200") => {
            println!("{}", text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("ok"));
            ExitCode::SUCCESS
        }
        Ok(text) => {
            eprintln!("outbox-relay healthcheck: {addr}{path}: {}", text.lines().next().unwrap_or("no answer"));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("outbox-relay healthcheck: {addr}{path}: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},amqprs=warn", cfg.log.level)));
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
