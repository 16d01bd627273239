//! The sold-out shortcut: once a drop is sold out, most reservations are bots asking again, and the
//! database would tell each of them "sold out". The shortcut tells them itself, at the cost of a map
//! look-up, and sends to the database only the requests whose answer could be anything else.
//!
//! When it answers. A drop is **sold out** here when the feed's latest notice for it says no unit is
//! available and nobody waits in its line; from then until the next notice, `reserve_item` answers
//! `DS020` to every buyer except:
//! - the drop's buyers (`drop_buyers`: whoever holds units, or bought some), since a holder gets their
//!   hold back and a buyer at their limit is told so; read from the database after each such notice.
//!   A hold made elsewhere (another adapter, plain SQL) comes with a notice even when the drop's
//!   figures do not move, as when it takes over a past-due hold: the worker publishes a sold-out drop
//!   that gained a hold (sql/feed.sql). Holds made through this adapter are added as they are made,
//!   before that notice;
//! - requests the database would refuse for another reason that the shortcut can tell from the
//!   request alone: a size the drop does not have, none on a drop sold by size, a quantity out of range,
//!   a drop that has ended.
//!
//! A drop that sold out before the feed started listening sends no notice until it changes: when LISTEN
//! starts, the active drops are read instead (`seed`).
//!
//! Any notice for the drop turns it off at once (the units it announces may have come back), and so do a
//! cancel or a join of the line through this adapter (`changed_here`, before the notice that follows
//! it) and losing the feed (`forget_all`), so the shortcut is never older than one notice. What it
//! gives up:
//! a unit of a past-due hold, which `reserve_item` would hand to the next reserver before the sweep, is
//! offered only after the sweep (within a tick of the worker, when the notice announcing it arrives);
//! and a buyer id unknown to the database is told "sold out" rather than "unknown buyer".

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::pool::{Connection, Database};
use crate::db::queries::{self, Asked};
use crate::db::DbError;
use crate::http::errors::ApiError;

/// Drops remembered at most; each is a few bytes per buyer of it.
const MAX_DROPS: usize = 1024;
/// The largest quantity `reserve_item` accepts.
const MAX_QUANTITY: i32 = 10_000;
/// After a cancel or a join of the line through this adapter, how long a "sold out" notice of the drop
/// is not believed: one published before the change committed may still be on its way, and the
/// change's own notice comes within a worker tick.
const AFTER_CHANGE: Duration = Duration::from_secs(1);

/// A sold-out drop as the shortcut answers for it.
struct SoldOut {
    name: String,
    /// A sized drop's size labels; empty for a drop without sizes.
    labels: Vec<String>,
    ends_at: Option<DateTime<Utc>>,
    buyers: HashSet<Uuid>,
}

/// Per drop: which notice the state follows, and the state once read.
#[derive(Default)]
struct Entry {
    /// Bumped by every notice of the drop: a read that started before a later notice is thrown away.
    generation: u64,
    sold_out: Option<SoldOut>,
    /// Buyers this adapter made holds for while the drop's read ran: the read may have looked before
    /// their holds committed.
    noted: HashSet<Uuid>,
    /// Until when a notice saying "sold out" is not believed (`AFTER_CHANGE`).
    changed_until: Option<Instant>,
}

/// The drop's entry with the shortcut off and any read under way thrown away (a newer generation), made
/// if the drop is new and there is room for it; None when there is not (the drop is not answered for).
fn start_over(drops: &mut HashMap<Uuid, Entry>, drop_id: Uuid) -> Option<&mut Entry> {
    if drops.len() >= MAX_DROPS && !drops.contains_key(&drop_id) {
        return None;
    }
    let entry = drops.entry(drop_id).or_default();
    entry.generation += 1;
    entry.sold_out = None;
    Some(entry)
}

pub struct SoldOutShortcut {
    pool: Database,
    drops: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

impl SoldOutShortcut {
    pub fn new(pool: Database) -> Self {
        SoldOutShortcut {
            pool,
            drops: Arc::default(),
        }
    }

    /// A notice of the drop arrived: off at once; when the drop is sold out with nobody waiting, on
    /// again as soon as its buyers are read.
    pub fn on_notice(&self, drop_id: Uuid, available: i64, waiting: i64) {
        let mut drops = self.drops.lock().expect("sold-out map");
        let sold_out = available == 0 && waiting == 0;
        if !sold_out {
            drops.remove(&drop_id);
            return;
        }
        let Some(entry) = start_over(&mut drops, drop_id) else {
            return;
        };
        if entry
            .changed_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        let generation = entry.generation;
        drop(drops);
        self.read(drop_id, generation);
    }

    /// A hold of the drop was cancelled, or a buyer joined its line, through this adapter: from that
    /// commit on, before the notice that says so, the database answers the drop's reservations
    /// otherwise (the units are back, or there is a line to join), and a buyer who asks next must not
    /// be told "sold out" in between.
    pub fn changed_here(&self, drop_id: Uuid) {
        let mut drops = self.drops.lock().expect("sold-out map");
        if let Some(entry) = start_over(&mut drops, drop_id) {
            entry.changed_until = Some(Instant::now() + AFTER_CHANGE);
        }
    }

    /// The feed was lost or resynchronised: nothing it said can be relied on any more.
    pub fn forget_all(&self) {
        self.drops.lock().expect("sold-out map").clear();
    }

    /// The database made or returned a hold for this buyer: they are one of the drop's buyers now.
    pub fn note_buyer(&self, drop_id: Uuid, buyer: Uuid) {
        let mut drops = self.drops.lock().expect("sold-out map");
        if let Some(entry) = drops.get_mut(&drop_id) {
            match entry.sold_out.as_mut() {
                Some(sold_out) => sold_out.buyers.insert(buyer),
                None => entry.noted.insert(buyer),
            };
        }
    }

    /// The answer `reserve_item` would give, when the shortcut knows it: `DS020`.
    pub fn refuse(&self, drop_id: Uuid, asked: &Asked) -> Option<ApiError> {
        let mut drops = self.drops.lock().expect("sold-out map");
        let entry = drops.get_mut(&drop_id)?;
        let sold_out = entry.sold_out.as_ref()?;
        if !(1..=MAX_QUANTITY).contains(&asked.quantity)
            || sold_out.ends_at.is_some_and(|end| Utc::now() >= end)
            || sold_out.buyers.contains(&asked.buyer)
        {
            return None;
        }
        let message = match (&asked.variant, sold_out.labels.is_empty()) {
            (None, true) => format!("drop \"{}\" is sold out", sold_out.name),
            (Some(label), false) => {
                let label = label.trim();
                if !sold_out.labels.iter().any(|known| known == label) {
                    return None;
                }
                format!("size \"{label}\" of drop \"{}\" is sold out", sold_out.name)
            }
            _ => return None,
        };
        Some(ApiError::from_sqlstate("DS020", &message))
    }

    /// The feed has just started listening (again): the drops it says nothing about until they change
    /// are read from the database instead. A drop that sold out before this adapter listened sends no
    /// notice until something moves, which for a drop sold to the last unit may be never, and every bot's
    /// request would reach the database meanwhile. Called before the first notice is relayed: a notice
    /// that follows overrides what was read here, as any notice does.
    pub async fn seed(&self) {
        // One connection for the look and the reads, one drop after the other: a restart must not take
        // the whole pool.
        let read = async {
            let client = self.pool.connection().await?;
            let drops = queries::active_drops(&client).await?;
            Ok::<_, DbError>((client, drops))
        };
        let (client, drops) = match read.await {
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(%error, "sold-out shortcut not seeded: cannot read the active drops");
                return;
            }
        };
        let mut to_read = Vec::new();
        {
            let mut map = self.drops.lock().expect("sold-out map");
            for drop in drops
                .iter()
                .filter(|drop| drop.available_stock == 0 && drop.waiting == 0)
            {
                if let Some(entry) = start_over(&mut map, drop.id) {
                    to_read.push((drop.id, entry.generation));
                }
            }
        }
        if to_read.is_empty() {
            return;
        }
        let map = self.drops.clone();
        tokio::spawn(async move {
            for (drop_id, generation) in to_read {
                keep(&map, drop_id, generation, read_one(&client, drop_id).await);
            }
        });
    }

    /// Reads the drop and its buyers in the background, and keeps them unless a notice came meanwhile.
    fn read(&self, drop_id: Uuid, generation: u64) {
        let pool = self.pool.clone();
        let drops = self.drops.clone();
        tokio::spawn(async move {
            let read = match pool.connection().await {
                Ok(client) => read_one(&client, drop_id).await,
                Err(error) => Err(error),
            };
            keep(&drops, drop_id, generation, read);
        });
    }
}

/// The drop and its buyers, as the shortcut answers for them.
async fn read_one(client: &Connection, drop_id: Uuid) -> Result<SoldOut, DbError> {
    let drop = queries::drop_status(client, drop_id).await?;
    let buyers = queries::drop_buyers(client, drop_id).await?;
    Ok(SoldOut {
        name: drop.name,
        labels: drop.variants.into_iter().map(|size| size.label).collect(),
        ends_at: drop.ends_at,
        buyers: buyers.into_iter().collect(),
    })
}

/// Keeps what a read found, unless a notice came while it ran (a newer generation).
fn keep(
    drops: &Mutex<HashMap<Uuid, Entry>>,
    drop_id: Uuid,
    generation: u64,
    read: Result<SoldOut, DbError>,
) {
    let mut drops = drops.lock().expect("sold-out map");
    let Some(entry) = drops.get_mut(&drop_id) else {
        return;
    };
    if entry.generation != generation {
        return; // a newer notice started its own read, or turned the shortcut off
    }
    match read {
        Ok(mut sold_out) => {
            // A buyer kept too long only means their next call goes to the database.
            sold_out.buyers.extend(entry.noted.drain());
            entry.sold_out = Some(sold_out);
        }
        Err(error) => {
            // Without the buyers nothing can be answered here: the database answers instead.
            tracing::debug!(%error, drop = %drop_id, "sold-out shortcut off: cannot read the drop's buyers");
            drops.remove(&drop_id);
        }
    }
}
