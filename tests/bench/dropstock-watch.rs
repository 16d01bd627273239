//! dropstock-watch: WebSocket load on a running `dropstock-http`.
//!
//! `delay`: N watchers on one drop's feed (and, beside them, M Socket.IO clients on `/socket.io/`) while a
//! few REST clients reserve on it at a steady rate; reports the delay from each hold's commit to each
//! watcher's receipt of it, for each kind of watcher, and the adapter's peak RSS.
//! `throughput`: reservation throughput with N watchers on the hot drop against none, in alternating
//! rounds of one run (none, with, with, none, …), so drift on a shared machine hits both sides alike.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dropstock_tests::load::latency::millis;
use dropstock_tests::load::reserve::{self, Mode, Plan};
use dropstock_tests::load::rss::{resident_kib, RssSampler};
use dropstock_tests::load::watch::{FeedReport, Protocol};
use dropstock_tests::load::{adapter_address, fixtures, limits, runtime, watch, ResultLine};

#[derive(Parser)]
#[command(
    about = "WebSocket watchers on dropstock-http: feed delay, adapter memory, cost to reservations"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct Common {
    /// The adapter's base URL (loopback).
    #[arg(
        long,
        env = "DROPSTOCK_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// The database the adapter serves.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Worker threads of the load generator itself.
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    /// WebSocket handshakes in flight at once while connecting (each costs the adapter a snapshot query).
    #[arg(long, default_value_t = 64, global = true)]
    connect_at_once: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// Delay from commit to every watcher, and the adapter's RSS.
    Delay {
        /// Watchers on the drop's feed.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Socket.IO clients (Engine.IO over WebSocket) beside them.
        #[arg(long, default_value_t = 0)]
        socketio_clients: usize,
        /// How long the holds keep coming.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// New holds per second, in total.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// REST clients making them.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// The adapter's process id, to sample its RSS.
        #[arg(long)]
        adapter_pid: Option<u32>,
    },
    /// Reservations/s with watchers on the hot drop against none.
    Throughput {
        /// Watchers during the "with" rounds.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Concurrent keep-alive HTTP clients reserving.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Length of each round.
        #[arg(long, default_value_t = 4.0)]
        round_seconds: f64,
        /// Pairs of rounds (each pair: one without watchers, one with, in alternating order).
        #[arg(long, default_value_t = 2)]
        pairs: usize,
        /// Buyers to prepare; a round ends early when all have asked.
        #[arg(long, default_value_t = 600_000)]
        buyers: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let open_files = limits::raise_open_files();
    let outcome = runtime(cli.common.threads).and_then(|runtime| {
        runtime.block_on(async {
            match &cli.scenario {
                Scenario::Delay {
                    clients,
                    socketio_clients,
                    seconds,
                    rate,
                    writers,
                    adapter_pid,
                } => {
                    let watchers = clients + socketio_clients;
                    if (watchers as u64) + 64 > open_files {
                        return Err(format!(
                            "{watchers} watchers need more open files than the limit of {open_files} (ulimit -n)"
                        ));
                    }
                    let counts = (*clients, *socketio_clients);
                    delay(&cli.common, counts, *seconds, *rate, *writers, *adapter_pid).await
                }
                Scenario::Throughput {
                    watchers,
                    clients,
                    round_seconds,
                    pairs,
                    buyers,
                } => {
                    throughput(&cli.common, *watchers, *clients, *round_seconds, *pairs, *buyers).await
                }
            }
        })
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("dropstock-watch: {error}");
            ExitCode::FAILURE
        }
    }
}

fn database_url(common: &Common) -> Result<&str, String> {
    common
        .database_url
        .as_deref()
        .ok_or_else(|| "DATABASE_URL is not set (or pass --database-url)".to_owned())
}

/// Prints one kind of watcher's figures.
fn print_feed(kind: &str, report: &FeedReport) {
    println!(
        "  {kind}, commit to receipt, every watcher and hold: {}",
        report.delays
    );
    println!(
        "  {kind}, commit to the first watcher (worker tick, NOTIFY, relay): {}",
        report.first_watcher
    );
    println!(
        "  {kind}, first to last watcher for one stock level (fan-out): {}",
        report.fan_out
    );
    println!(
        "  {kind}, holds never seen by a watcher: {}, feeds lost: {}, resyncs: {}, messages ahead of the REST answer: {}",
        report.missed, report.lost_feeds, report.resyncs, report.before_answer
    );
}

/// One kind of watcher's figures on the result line, their names after `prefix`.
fn add_feed(result: &mut ResultLine, prefix: &str, report: &FeedReport) {
    let name = |field: &str| format!("{prefix}{field}");
    result
        .add(&name("watchers"), report.watchers)
        .add_ms(&name("p50_ms"), report.delays.p50)
        .add_ms(&name("p99_ms"), report.delays.p99)
        .add_ms(&name("max_ms"), report.delays.max)
        .add(&name("missed"), report.missed)
        .add(&name("lost"), report.lost_feeds)
        .add(&name("resyncs"), report.resyncs);
}

/// `counts`: watchers on `/ws`, then Socket.IO clients.
async fn delay(
    common: &Common,
    counts: (usize, usize),
    seconds: f64,
    rate: f64,
    writers: usize,
    adapter_pid: Option<u32>,
) -> Result<bool, String> {
    let (clients, socketio_clients) = counts;
    let address = adapter_address(&common.url)?;
    let database = fixtures::connect(database_url(common)?).await?;
    let wanted = (rate * seconds * 1.2) as usize + writers + 10;
    let buyers = Arc::new(fixtures::buyers(&database, wanted).await?);
    let stock = 1_000_000;
    let drop_id = fixtures::create_drop(&database, "bench adapter watched drop", stock).await?;
    let before = fixtures::stock(&database, drop_id).await?;

    let idle_kib = adapter_pid.and_then(resident_kib);
    let sampler = adapter_pid.map(RssSampler::start);
    eprintln!("watch delay: connecting {clients} watchers and {socketio_clients} Socket.IO clients to drop {drop_id}");
    let mut groups = Vec::new();
    for (count, protocol) in [
        (clients, Protocol::WebSocket),
        (
            socketio_clients,
            Protocol::SocketIo {
                total_stock: i64::from(stock),
            },
        ),
    ] {
        match watch::connect(address, drop_id, count, common.connect_at_once, protocol).await {
            Ok(watchers) => groups.push(watchers),
            Err(error) => {
                fixtures::end_drop(&database, drop_id).await?;
                return Err(error);
            }
        }
    }
    let connected_kib = adapter_pid.and_then(resident_kib);
    let connect_time: Duration = groups.iter().map(|group| group.connect_time).sum();
    eprintln!(
        "watch delay: {} watchers connected in {:.1} s; {rate:.0} holds/s for {seconds:.0} s from {writers} REST clients",
        clients + socketio_clients,
        connect_time.as_secs_f64()
    );
    let commits = watch::steady_holds(
        address,
        drop_id,
        buyers,
        writers,
        rate,
        Duration::from_secs_f64(seconds),
    )
    .await;
    // The last holds reach the feed at the worker's next tick (100 ms) and then every watcher.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut reports = Vec::new();
    for group in groups {
        let logs = group.close().await;
        reports.push(watch::feed_delays(
            i64::from(stock),
            &commits.instants,
            &logs,
        ));
    }
    let peak_kib = sampler.as_ref().map(RssSampler::peak_kib);
    drop(sampler);
    let (report, socketio) = (&reports[0], &reports[1]);

    let after = fixtures::stock(&database, drop_id).await;
    fixtures::end_drop(&database, drop_id).await?;
    let verdict = fixtures::verdict(before, after?, commits.instants.len() as u64, 0);
    let complete = reports
        .iter()
        .all(|report| report.missed == 0 && report.lost_feeds == 0 && report.resyncs == 0);

    println!("dropstock-watch delay: {clients} watchers and {socketio_clients} Socket.IO clients on drop {drop_id}");
    println!(
        "  holds: {} ({} refused), check: {verdict}",
        commits.instants.len(),
        commits.refused
    );
    print_feed("/ws", report);
    if socketio_clients > 0 {
        print_feed("Socket.IO", socketio);
    }
    let mib = |kib: Option<u64>| {
        kib.map_or("n/a".to_owned(), |kib| {
            format!("{:.1}", kib as f64 / 1024.0)
        })
    };
    if adapter_pid.is_some() {
        println!(
            "  adapter RSS: {} MiB before, {} MiB with every watcher connected, peak {} MiB",
            mib(idle_kib),
            mib(connected_kib),
            mib(peak_kib)
        );
    }
    let mut result = ResultLine::default();
    result
        .add("holds", commits.instants.len())
        .add("connect_s", format!("{:.1}", connect_time.as_secs_f64()));
    add_feed(&mut result, "", report);
    result
        .add_ms("first_p50_ms", report.first_watcher.p50)
        .add_ms("first_p99_ms", report.first_watcher.p99)
        .add_ms("fan_out_p50_ms", report.fan_out.p50)
        .add_ms("fan_out_p99_ms", report.fan_out.p99)
        .add("samples", report.delays.count);
    if socketio_clients > 0 {
        add_feed(&mut result, "sio_", socketio);
    }
    result
        .add("rss_peak_mib", mib(peak_kib))
        .add("rss_idle_mib", mib(idle_kib))
        .add("check", if verdict.ok() { "ok" } else { "broken" });
    result.print();
    Ok(verdict.ok() && complete)
}

async fn throughput(
    common: &Common,
    watcher_count: usize,
    clients: usize,
    round_seconds: f64,
    pairs: usize,
    buyers: usize,
) -> Result<bool, String> {
    let address = adapter_address(&common.url)?;
    let database = fixtures::connect(database_url(common)?).await?;
    let buyers = Arc::new(fixtures::buyers(&database, buyers).await?);
    // Rounds alternate none, with, with, none, …: a steady drift of the machine's speed cancels out.
    let order: Vec<bool> = (0..pairs)
        .flat_map(|pair| {
            if pair % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            }
        })
        .collect();
    let (mut holds, mut elapsed) = ([0u64; 2], [Duration::ZERO; 2]);
    let mut all_ok = true;
    let mut p99 = [Duration::ZERO; 2];
    for (round, &watched) in order.iter().enumerate() {
        let drop_id = fixtures::create_drop(&database, "bench adapter hot drop", i32::MAX).await?;
        let before = fixtures::stock(&database, drop_id).await?;
        let watchers = if watched {
            Some(
                watch::connect(
                    address,
                    drop_id,
                    watcher_count,
                    common.connect_at_once,
                    Protocol::WebSocket,
                )
                .await?,
            )
        } else {
            None
        };
        let label = format!(
            "watch throughput {}/{} ({})",
            round + 1,
            order.len(),
            if watched {
                format!("{watcher_count} watchers")
            } else {
                "no watchers".to_owned()
            }
        );
        let plan = Plan {
            addresses: vec![address],
            drop_id,
            clients,
            purchase: false,
            mode: Mode::Throughput {
                seconds: round_seconds,
            },
            progress: Some(label.clone()),
        };
        let outcome = reserve::run(&plan, buyers.clone()).await;
        let lost = match watchers {
            Some(watchers) => {
                let logs = watchers.close().await;
                logs.iter().filter(|log| log.lost.is_some()).count()
            }
            None => 0,
        };
        let after = fixtures::stock(&database, drop_id).await;
        fixtures::end_drop(&database, drop_id).await?;
        let outcome = outcome?;
        let verdict = fixtures::verdict(before, after?, outcome.fresh_holds, 0);
        all_ok &= verdict.ok() && lost == 0;
        eprintln!(
            "{label}: {:.0} reservations/s, p99 {:.1} ms, check: {verdict}{}",
            outcome.holds_per_second(),
            millis(outcome.reserve_latency.p99),
            if lost > 0 {
                format!(", {lost} watchers lost their feed")
            } else {
                String::new()
            }
        );
        let side = usize::from(watched);
        holds[side] += outcome.fresh_holds;
        elapsed[side] += outcome.elapsed;
        p99[side] = p99[side].max(outcome.reserve_latency.p99);
    }
    let rate = |side: usize| holds[side] as f64 / elapsed[side].as_secs_f64().max(1e-9);
    let ratio = rate(1) / rate(0).max(1e-9);
    println!(
        "dropstock-watch throughput: {clients} HTTP clients, {} rounds of {round_seconds:.0} s",
        order.len()
    );
    println!(
        "  no watchers: {:.0} reservations/s (worst round p99 {:.1} ms)",
        rate(0),
        millis(p99[0])
    );
    println!(
        "  {watcher_count} watchers: {:.0} reservations/s (worst round p99 {:.1} ms)",
        rate(1),
        millis(p99[1])
    );
    println!("  with / without: {ratio:.2}x");
    let mut result = ResultLine::default();
    result
        .add("watchers", watcher_count)
        .add("none_per_s", format!("{:.0}", rate(0)))
        .add("watched_per_s", format!("{:.0}", rate(1)))
        .add("ratio", format!("{ratio:.2}"))
        .add("check", if all_ok { "ok" } else { "broken" });
    result.print();
    Ok(all_ok)
}
