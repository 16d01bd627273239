//! The `dropstock-http` binary: flags and environment, logging and signals. The adapter itself is the
//! `dropstock_http` library, so tests run the same code in-process.

use std::process::ExitCode;

use clap::Parser;
use dropstock_http::db::pool;
use dropstock_http::{serve, App, Config};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a log file or CI output they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dropstock-http: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dropstock-http: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Everything that can stop the adapter from starting is one line on stderr and exit code 1.
async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = App::connect(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| format!("cannot listen on {}: {source}", config.listen))?;
    let address = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(
        database = %pool::describe(&app.database),
        admin = app.access.admin_enabled(),
        jwt = app.access.jwt_mode(),
        "dropstock-http listening on http://{address} (live feed at ws://{address}/ws and \
         http://{address}/socket.io/)"
    );
    if app.access.open_drop_creation() {
        tracing::warn!(
            "DROP CREATION IS OPEN: anyone who can reach http://{address} can create drops without the \
             admin token (--open-drop-creation / DROPSTOCK_OPEN_DROP_CREATION); use it only on a trusted \
             network or for local development"
        );
    }
    serve(listener, app, shutdown_signal()).await;
    Ok(())
}

/// SIGTERM (how service managers and orchestrators stop a process) or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the adapter");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
