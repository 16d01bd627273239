//! Rate limits per client address and per buyer: a bot hammering the API gets 429 with `Retry-After`
//! instead of taking connections and database time from everyone else.
//!
//! Each key has one instant of state (GCRA, the token bucket spelled as a "theoretical arrival time"):
//! a request is let through when the key's arrival time, moved on by one interval, is at most `burst`
//! intervals ahead of now. Memory is bounded: a table holds at most `MAX_KEYS` keys; when it is full,
//! keys whose bucket has refilled are forgotten (they lose nothing), and if every key is still busy a new
//! key is let through untracked rather than lock out buyers who did nothing wrong.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::http::errors::ApiError;

/// Keys a table remembers at most (about 40 bytes each).
const MAX_KEYS: usize = 100_000;

/// The client's address, put into each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// A rate: `per_second` sustained, `burst` at once. A rate of 0 turns the limit off.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

struct Table<K> {
    /// Time between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of now a key's arrival time may run: `burst` intervals.
    tolerance: Duration,
    arrivals: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new(rate: Rate) -> Option<Self> {
        if rate.per_second <= 0.0 || !rate.per_second.is_finite() || rate.burst == 0 {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate.per_second);
        Some(Table {
            interval,
            tolerance: interval.saturating_mul(rate.burst),
            arrivals: Mutex::new(HashMap::new()),
        })
    }

    /// Ok, or how long until this key may come again.
    fn check(&self, key: K, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update; the map is still usable.
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if arrivals.len() >= MAX_KEYS && !arrivals.contains_key(&key) {
            arrivals.retain(|_, arrival| *arrival > now);
            if arrivals.len() >= MAX_KEYS {
                return Ok(());
            }
        }
        let arrival = arrivals.get(&key).copied().unwrap_or(now).max(now);
        let next = arrival + self.interval;
        let ahead = next - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        arrivals.insert(key, next);
        Ok(())
    }
}

/// The adapter's two limits.
pub struct RateLimits {
    per_client: Option<Table<IpAddr>>,
    per_buyer: Option<Table<Uuid>>,
}

impl RateLimits {
    pub fn new(per_client: Rate, per_buyer: Rate) -> Self {
        RateLimits {
            per_client: Table::new(per_client),
            per_buyer: Table::new(per_buyer),
        }
    }

    /// Counts one request from the address in `extensions` (requests without one are not limited).
    pub fn check_client(&self, extensions: &http::Extensions) -> Result<(), ApiError> {
        let (Some(table), Some(ClientAddr(address))) =
            (&self.per_client, extensions.get::<ClientAddr>())
        else {
            return Ok(());
        };
        table
            .check(*address, Instant::now())
            .map_err(|wait| refusal("from this address", wait))
    }

    /// Counts one reserve, buy or cancel by `buyer`.
    pub fn check_buyer(&self, buyer: Uuid) -> Result<(), ApiError> {
        let Some(table) = &self.per_buyer else {
            return Ok(());
        };
        table
            .check(buyer, Instant::now())
            .map_err(|wait| refusal("for this buyer", wait))
    }
}

fn refusal(whose: &str, wait: Duration) -> ApiError {
    // Retry-After is in whole seconds; rounding up never invites a retry that is refused again.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::too_many_requests(
        format!("too many requests {whose}; retry in {seconds} s"),
        seconds.max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(per_second: f64, burst: u32) -> Table<u8> {
        Table::new(Rate { per_second, burst }).unwrap()
    }

    #[test]
    fn lets_a_burst_through_then_the_sustained_rate() {
        let limit = table(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(limit.check(1, start).is_ok());
        }
        let wait = limit.check(1, start).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another key is not affected.
        assert!(limit.check(2, start).is_ok());
        // One interval later, exactly one more request fits.
        let later = start + Duration::from_millis(100);
        assert!(limit.check(1, later).is_ok());
        assert!(limit.check(1, later).is_err());
        // After a full refill the whole burst is back.
        let idle = later + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(limit.check(1, idle).is_ok());
        }
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        assert!(Table::<u8>::new(Rate {
            per_second: 0.0,
            burst: 10
        })
        .is_none());
        assert!(Table::<u8>::new(Rate {
            per_second: 1.0,
            burst: 0
        })
        .is_none());
    }

    #[test]
    fn memory_stays_bounded_and_idle_keys_are_forgotten() {
        let limit: Table<u32> = Table::new(Rate {
            per_second: 1.0,
            burst: 1,
        })
        .unwrap();
        let start = Instant::now();
        for key in 0..MAX_KEYS as u32 {
            limit.check(key, start).unwrap();
        }
        // Full and all busy: a new key is let through untracked.
        assert!(limit.check(u32::MAX, start).is_ok());
        assert_eq!(limit.arrivals.lock().unwrap().len(), MAX_KEYS);
        // Once they refill, they make room.
        let later = start + Duration::from_secs(2);
        assert!(limit.check(u32::MAX, later).is_ok());
        assert_eq!(limit.arrivals.lock().unwrap().len(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let refused = refusal("for this buyer", Duration::from_millis(1));
        assert_eq!(refused.retry_after, Some(1));
        let refused = refusal("for this buyer", Duration::from_millis(2500));
        assert_eq!(refused.retry_after, Some(3));
        assert_eq!(refused.status, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "rate_limited");
    }
}
