//! dropstock-http: the HTTP adapter in front of the dropstock extension (REST, WebSocket feed, live page).
//!
//! The adapter holds no state that matters: any number of copies can run side by side, each with its own
//! pool and its own LISTEN connection.

mod app;
mod config;
mod db;
mod feed;
mod http;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::Config;
use crate::db::batching::Batcher;
use crate::db::pool::StartupError;
use crate::feed::hub::Hub;
use crate::http::access::Access;
use crate::http::cors::Cors;
use crate::http::metrics::Metrics;

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

async fn run(config: Config) -> Result<(), StartupError> {
    let database = db::pool::parse_url(&config.database_url)?;
    let pool = db::pool::pool(&database, usize::from(config.pool_size))?;
    db::pool::check(&pool, &database).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartupError::Bind {
            addr: config.listen,
            source,
        })?;

    let access = Access::new(config.admin_token(), config.jwt_secret());
    let app = Arc::new(App {
        reservations: Batcher::new(pool.clone()),
        pool,
        access,
        cors: Cors::new(&config.cors_origins),
        hub: Hub::new(),
        metrics: Metrics::new(),
        limits: config.rate_limits(),
        shutdown: CancellationToken::new(),
        sockets: TaskTracker::new(),
    });
    let listen_task = tokio::spawn(feed::relay::run(
        database.clone(),
        app.clone(),
        app.shutdown.clone(),
    ));

    let address = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(
        database = %db::pool::describe(&database),
        admin = app.access.admin_enabled(),
        jwt = app.access.jwt_mode(),
        "dropstock-http listening on http://{address} (live feed at ws://{address}/ws)"
    );
    http::server::serve(listener, app.clone(), config.drain()).await;
    let _ = listen_task.await;
    app.pool.close();
    Ok(())
}
