//! The one LISTEN connection: notices from the background worker go into the fan-out.
//!
//! The connection is dedicated (a pooled connection would stop delivering as soon as it went back to the
//! pool) and its `Connection` half is polled with `poll_message` by a task of its own, because a
//! LISTEN connection that nobody polls delivers nothing. When it is lost, the adapter reconnects with
//! capped, jittered backoff. Clients always know whether the feed is live: they are told `paused` when
//! it is lost and `resync` whenever LISTEN is (re-)established, the first time included, since clients
//! are served before it is: whatever changed in between was never heard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls, Notification};
use uuid::Uuid;

use crate::app::App;
use crate::db::queries;
use crate::feed::hub::FeedEvent;
use crate::feed::messages;
use crate::feed::notice::{InboxNotice, Notice};

/// How long the sold-out shortcut's seeding may hold the relay back when LISTEN starts.
const SEED_TIMEOUT: Duration = Duration::from_secs(2);
/// The worker's channel of stock notices.
const CHANNEL: &str = "dropstock";
/// The worker's channel of offers, each for one inbox.
const INBOX_CHANNEL: &str = "dropstock_inbox";
/// Names the LISTEN backend in `pg_stat_activity`, so operators (and tests) can find it.
pub const APPLICATION_NAME: &str = "dropstock-http-listen";

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A connection whose server vanished without a FIN would otherwise look idle forever.
const HEALTH_EVERY: Duration = Duration::from_secs(15);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How a LISTEN session ended: whether it had got as far as listening, and why it stopped.
struct Lost {
    was_listening: bool,
    reason: String,
}

impl Lost {
    fn before(reason: impl ToString) -> Self {
        Lost {
            was_listening: false,
            reason: reason.to_string(),
        }
    }

    fn after(reason: impl ToString) -> Self {
        Lost {
            was_listening: true,
            reason: reason.to_string(),
        }
    }
}

/// Runs until the app shuts down, keeping a LISTEN connection up.
pub async fn run(app: Arc<App>) {
    let mut config = app.listen_database.clone();
    config.application_name(APPLICATION_NAME);
    let shutdown = &app.shutdown;
    let mut failures: u32 = 0;
    let mut listened_before = false;
    loop {
        let lost = tokio::select! {
            _ = shutdown.cancelled() => return,
            lost = listen(&config, &app, listened_before) => lost,
        };
        app.hub.set_listening(false);
        // Without the feed, a sold-out drop's units could come back unseen.
        app.sold_out.forget_all();
        if lost.was_listening {
            app.hub.publish(FeedEvent::Paused);
            listened_before = true;
            failures = 0;
            tracing::warn!(reason = %lost.reason, "LISTEN connection lost; reconnecting");
        } else {
            failures = failures.saturating_add(1);
            tracing::warn!(reason = %lost.reason, attempt = failures, "cannot LISTEN; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff(failures)) => {}
        }
    }
}

/// Exponential from 100 ms, capped at 10 s, with jitter so that many adapters cut off by the same
/// database restart do not all reconnect in the same instant.
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_FIRST
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// One session: connect, LISTEN, relay until the connection fails, and say why it ended.
async fn listen(config: &tokio_postgres::Config, app: &App, listened_before: bool) -> Lost {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(error) => return Lost::before(error),
    };
    let (sender, mut notifications) = mpsc::channel::<Notification>(256);
    let pump = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if sender.send(notification).await.is_err() {
                        return Ok(());
                    }
                }
                // The server's own NOTICE messages (warnings and the like), not the worker's notices.
                Ok(AsyncMessage::Notice(server_notice)) => {
                    tracing::debug!(notice = %server_notice, "notice on the LISTEN connection")
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });

    if let Err(error) = client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {INBOX_CHANNEL}"))
        .await
    {
        return Lost::before(error);
    }
    // Before the first notice is relayed (they wait in the channel meanwhile): drops already sold out
    // send none until they change. Bounded: a slow database must not hold the feed back.
    let _ = tokio::time::timeout(SEED_TIMEOUT, app.sold_out.seed()).await;
    // Live from here (`/healthz`, snapshots), once the seeding is done: a client that waits for it is
    // not told to resync. Every client connected so far may have missed changes: before the first
    // LISTEN too, since REST and `/ws` serve from the start (their snapshots said `live: false`). Told
    // to resync, they catch up; the flag goes first, so none is left with `live: false` and no resync.
    app.hub.set_listening(true);
    app.hub.publish(FeedEvent::Resync);
    if listened_before {
        app.metrics.listen_reconnects.inc();
        tracing::info!("LISTEN re-established; clients told to resync");
    } else {
        tracing::info!(channel = CHANNEL, "listening for stock changes");
    }

    // The health probe runs beside the relay loop, not inside it: while a probe waits for its answer the
    // loop keeps draining notices, so the pump never blocks on a full channel with the answer
    // stuck behind it.
    let (lost_sender, mut probe_failed) = oneshot::channel::<String>();
    let _probe =
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(HEALTH_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let reason =
                    match tokio::time::timeout(HEALTH_TIMEOUT, client.batch_execute("SELECT 1"))
                        .await
                    {
                        Ok(Ok(())) => continue,
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => "no answer to a health check".to_owned(),
                    };
                let _ = lost_sender.send(reason);
                return;
            }
        }));
    let mut sizes = SizeLabels::default();
    loop {
        tokio::select! {
            notification = notifications.recv() => match notification {
                Some(notification) if notification.channel() == INBOX_CHANNEL => {
                    relay_offer(app, notification.payload())
                }
                Some(notification) => relay(app, &mut sizes, notification.payload()).await,
                None => {
                    let reason = match pump.await {
                        Ok(Err(error)) => error.to_string(),
                        Ok(Ok(())) => "the server closed the connection".to_owned(),
                        Err(error) => error.to_string(),
                    };
                    return Lost::after(reason);
                }
            },
            reason = &mut probe_failed => {
                return Lost::after(reason.unwrap_or_else(|_| "the health probe stopped".to_owned()));
            }
        }
    }
}

/// Stops a helper task when the session that started it ends, however it ends (including shutdown,
/// which drops the session mid-await). Dropping the probe drops the last `Client`, which closes the
/// connection and so ends the pump too.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The size labels of sized drops, read once per drop: notices name sizes by number, clients by label,
/// and a drop's sizes never change once it is created.
#[derive(Default)]
struct SizeLabels(HashMap<Uuid, Arc<[String]>>);

/// Sized drops remembered at most; past this the memory starts over (labels are read again as needed).
const SIZED_DROPS_REMEMBERED: usize = 10_000;

impl SizeLabels {
    async fn of(&mut self, app: &App, drop_id: Uuid) -> Result<Arc<[String]>, crate::db::DbError> {
        if let Some(labels) = self.0.get(&drop_id) {
            return Ok(labels.clone());
        }
        let client = app.pool.connection().await?;
        let labels: Arc<[String]> = queries::variant_labels(&client, drop_id).await?.into();
        if self.0.len() >= SIZED_DROPS_REMEMBERED {
            self.0.clear();
        }
        self.0.insert(drop_id, labels.clone());
        Ok(labels)
    }
}

async fn relay(app: &App, sizes: &mut SizeLabels, payload: &str) {
    match serde_json::from_str::<Notice>(payload) {
        Ok(notice) => {
            app.metrics.notices.inc();
            app.sold_out.on_notice(
                notice.drop_id,
                notice.available_stock,
                notice.waiting.unwrap_or(0),
            );
            let labels = if notice.variants.is_empty() {
                Arc::from([])
            } else {
                match sizes.of(app, notice.drop_id).await {
                    Ok(labels) => labels,
                    Err(error) => {
                        // Without the labels the sizes' change cannot be told: clients reload instead.
                        tracing::warn!(%error, drop = %notice.drop_id, "cannot read a drop's sizes");
                        app.hub.publish(FeedEvent::Resync);
                        return;
                    }
                }
            };
            app.hub.publish(FeedEvent::from_notice(&notice, &labels));
        }
        Err(error) => {
            app.metrics.bad_notices.inc();
            tracing::warn!(%error, payload = %payload.chars().take(200).collect::<String>(), "unreadable notification");
        }
    }
}

/// An offer goes into the fan-out tagged with its inbox; only clients that opened that inbox send it on.
fn relay_offer(app: &App, payload: &str) {
    match serde_json::from_str::<InboxNotice>(payload) {
        Ok(offer) => {
            app.metrics.notices.inc();
            app.hub.publish(FeedEvent::Offer {
                frame: messages::offer_frame(&offer),
                inbox: offer.inbox.into(),
            });
        }
        Err(error) => {
            app.metrics.bad_notices.inc();
            // The payload names an inbox, not a buyer: logging its start reveals nothing secret.
            tracing::warn!(%error, payload = %payload.chars().take(200).collect::<String>(), "unreadable offer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_capped() {
        for failures in 0..40 {
            let delay = backoff(failures);
            assert!(delay <= BACKOFF_CAP, "{delay:?} after {failures} failures");
            assert!(delay >= BACKOFF_FIRST / 2);
        }
        assert!(backoff(0) <= BACKOFF_FIRST);
        assert!(backoff(20) >= BACKOFF_CAP / 2);
    }
}
