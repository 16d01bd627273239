//! dropstock-load: N keep-alive HTTP clients reserving (and optionally buying) on one hot drop through a
//! running `dropstock-http`, then a check of every answer against the database.
//!
//! `--seconds` runs on a drop with more stock than the demand (throughput); `--sell-out STOCK` runs until
//! the drop's STOCK units are held, then measures the sold-out answers for `--sold-out-seconds`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dropstock_tests::load::reserve::{self, Mode, Plan};
use dropstock_tests::load::{adapter_address, fixtures, limits, runtime, ResultLine};

#[derive(Parser)]
#[command(
    about = "Reservations on one hot drop through dropstock-http, checked against the database"
)]
struct Args {
    /// The adapter's base URL (loopback); several, comma-separated, spread the clients over them.
    #[arg(
        long,
        env = "DROPSTOCK_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    url: Vec<String>,
    /// The database the adapter serves; buyers and the drop are made there, and the answers checked.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Concurrent keep-alive clients, one connection each.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// How long to reserve on a drop with more stock than the run can take.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Instead: a drop of STOCK units, reserved until sold out.
    #[arg(long, value_name = "STOCK")]
    sell_out: Option<u32>,
    /// After the sell-out, how long to keep asking.
    #[arg(long, default_value_t = 5.0)]
    sold_out_seconds: f64,
    /// Buy every new hold right away (POST /api/purchases).
    #[arg(long)]
    purchase: bool,
    /// Buyers to prepare (`load-1` … in dropstock.users); a throughput run ends early when all have asked
    /// (a sell-out's sold-out window instead asks again those told "sold out").
    #[arg(long, default_value_t = 600_000)]
    buyers: usize,
    /// Worker threads of the load generator itself.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    limits::raise_open_files();
    let outcome = runtime(args.threads).and_then(|runtime| runtime.block_on(run(&args)));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("dropstock-load: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let addresses = args
        .url
        .iter()
        .map(|url| adapter_address(url))
        .collect::<Result<Vec<_>, _>>()?;
    let database = fixtures::connect(&args.database_url).await?;
    let buyers = Arc::new(fixtures::buyers(&database, args.buyers).await?);
    let (mode, stock, label) = match args.sell_out {
        Some(stock) => (
            Mode::SellOut {
                stock: u64::from(stock),
                sold_out_seconds: args.sold_out_seconds,
            },
            i32::try_from(stock).map_err(|_| "--sell-out is too large".to_owned())?,
            "sell-out",
        ),
        None => (
            Mode::Throughput {
                seconds: args.seconds,
            },
            i32::MAX,
            "throughput",
        ),
    };
    let drop_id = fixtures::create_drop(&database, "bench adapter hot drop", stock).await?;
    let before = fixtures::stock(&database, drop_id).await?;
    let plan = Plan {
        addresses,
        drop_id,
        clients: args.clients,
        purchase: args.purchase,
        mode,
        progress: (!args.quiet).then(|| format!("load {label}")),
    };
    let outcome = reserve::run(&plan, buyers).await;
    // The drop is ended whatever happened, so the worker stops looking at it.
    let after = fixtures::stock(&database, drop_id).await;
    fixtures::end_drop(&database, drop_id).await?;
    let outcome = outcome?;
    let after = after?;
    let verdict = fixtures::verdict(before, after, outcome.fresh_holds, outcome.purchases);

    println!(
        "dropstock-load: {} clients over {} adapter(s), {label}{}, drop {drop_id}",
        args.clients,
        args.url.len(),
        if args.purchase {
            ", buying every hold"
        } else {
            ""
        }
    );
    println!(
        "  new holds: {} in {:.2} s = {:.0} reservations/s ({} requests){}",
        outcome.fresh_holds,
        outcome.elapsed.as_secs_f64(),
        outcome.holds_per_second(),
        outcome.requests,
        if outcome.buyers_ran_out {
            " (every prepared buyer had asked: raise --buyers)"
        } else {
            ""
        }
    );
    println!("  reservation latency: {}", outcome.reserve_latency);
    if args.purchase {
        println!(
            "  purchases: {}, latency {}",
            outcome.purchases, outcome.purchase_latency
        );
    }
    if args.sell_out.is_some() {
        println!(
            "  after the sell-out: {} sold-out answers in {:.2} s = {:.0}/s, latency {}",
            outcome.sold_out_answers,
            outcome.sold_out_elapsed.as_secs_f64(),
            outcome.sold_out_per_second(),
            outcome.sold_out_latency
        );
        println!(
            "  sold-out answers that arrived before the last unit's 201: {}",
            outcome.early_sold_out
        );
        println!(
            "  then an unknown path on the same connections: {} answers (404) in {:.2} s = {:.0}/s",
            outcome.not_found_answers,
            outcome.not_found_elapsed.as_secs_f64(),
            outcome.not_found_per_second()
        );
    }
    let answers: Vec<String> = outcome
        .answers
        .iter()
        .map(|(key, count)| format!("{key}: {count}"))
        .collect();
    println!("  answers: {}", answers.join(", "));
    println!(
        "  database: total {}, available {}, held {}, sold {}; check: {verdict}",
        after.total, after.available, after.held, after.sold
    );

    let mut result = ResultLine::default();
    result
        .add("mode", label)
        .add("clients", args.clients)
        .add("holds", outcome.fresh_holds)
        .add("seconds", format!("{:.3}", outcome.elapsed.as_secs_f64()))
        .add("holds_per_s", format!("{:.0}", outcome.holds_per_second()))
        .add_ms("p50_ms", outcome.reserve_latency.p50)
        .add_ms("p95_ms", outcome.reserve_latency.p95)
        .add_ms("p99_ms", outcome.reserve_latency.p99)
        .add("purchases", outcome.purchases)
        .add("errors", outcome.errors)
        .add("early_sold_out", outcome.early_sold_out)
        .add("sold_out_answers", outcome.sold_out_answers)
        .add(
            "sold_out_per_s",
            format!("{:.0}", outcome.sold_out_per_second()),
        )
        .add_ms("sold_out_p99_ms", outcome.sold_out_latency.p99)
        .add(
            "not_found_per_s",
            format!("{:.0}", outcome.not_found_per_second()),
        )
        .add("buyers_ran_out", outcome.buyers_ran_out)
        .add("oversold", verdict.oversold)
        .add("check", if verdict.ok() { "ok" } else { "broken" });
    result.print();
    Ok(verdict.ok())
}
