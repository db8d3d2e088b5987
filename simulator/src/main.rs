//! `orders_sync_simulator`: command line, runtime and signal handling.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use orders_sync_simulator::{serve, App, Settings};

/// Reference HTTP source for orders_sync tests, demos and benchmarks.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Loopback address to listen on, e.g. 127.0.0.1:0 (port 0 = ephemeral).
    #[arg(long)]
    listen: SocketAddr,
    /// Seed of the deterministic data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rows per store, stream and day (before late rows and deletions).
    #[arg(long, default_value_t = 20)]
    rows_per_day: u32,
    /// Require `Authorization: Bearer <TOKEN>` on /v1 requests.
    #[arg(long)]
    token: Option<String>,
    /// Tokio worker threads; 1 = a current-thread runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Largest page_size a request may ask for.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_page_size: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // This is a test fixture with a control API that rewrites its data: never expose it.
    if !cli.listen.ip().is_loopback() {
        eprintln!("refusing to listen on non-loopback address {}", cli.listen);
        return ExitCode::from(2);
    }
    let rt = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads as usize).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = Arc::new(App::new(Settings {
        seed: cli.seed,
        rows_per_day: cli.rows_per_day,
        token: cli.token,
        max_page_size: cli.max_page_size as usize,
    }));
    let code = rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(cli.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", cli.listen);
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cannot read bound address: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Exactly one line on stdout, flushed, so scripts can read the port.
        let mut out = std::io::stdout().lock();
        if writeln!(out, "listening on {addr}").and_then(|_| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
        drop(out);
        serve(listener, app, shutdown).await;
        ExitCode::SUCCESS
    });
    // Requests still sleeping in an injected timeout must not delay the exit.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Resolves on the first SIGTERM or SIGINT. Handlers are installed before "listening on" is
/// printed, so a signal sent right after that line always means a clean exit.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
