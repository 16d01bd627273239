//! Rate limits per client address and per buyer: a bot hammering the API gets 429 with `Retry-After`
//! instead of taking connections and database time from everyone else.
//!
//! Each limit is a keyed GCRA limiter from `governor` (`per_second` sustained, `burst` at once). Memory is
//! bounded: once a limiter holds `MAX_KEYS` keys, keys whose bucket has refilled are forgotten at each new
//! request (they lose nothing); if it reaches twice that with every key still busy, requests are let
//! through untracked until room frees up, rather than lock out buyers who did nothing wrong.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::http::errors::ApiError;

/// Keys past which a limiter forgets refilled keys, and twice which it stops tracking (about 40 bytes
/// each).
const MAX_KEYS: usize = 100_000;
/// How often a full limiter looks for keys to forget.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The client's address, put into each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// A rate: `per_second` sustained, `burst` at once. A rate of 0 turns the limit off.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

struct Table<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    /// When refilled keys were last forgotten: a sweep walks every key, so it runs at most once per
    /// `SWEEP_EVERY`, not once per request.
    swept_at: Mutex<Option<C::Instant>>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Table<K, C> {
    /// Forgets keys whose bucket has refilled, unless that was done less than `SWEEP_EVERY` ago.
    fn sweep(&self) {
        let now = self.clock.now();
        // A poisoned lock only means another request panicked mid-sweep; the time is still usable.
        let mut swept_at = self.swept_at.lock().unwrap_or_else(|e| e.into_inner());
        if swept_at.is_some_and(|at| Duration::from(now.duration_since(at)) < SWEEP_EVERY) {
            return;
        }
        *swept_at = Some(now);
        self.limiter.retain_recent();
    }

    fn new(rate: Rate, clock: C) -> Option<Self> {
        if rate.per_second <= 0.0 || !rate.per_second.is_finite() {
            return None;
        }
        let burst = NonZeroU32::new(rate.burst)?;
        let quota =
            Quota::with_period(Duration::from_secs_f64(1.0 / rate.per_second))?.allow_burst(burst);
        Some(Table {
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
            swept_at: Mutex::new(None),
        })
    }

    /// Ok, or how long until this key may come again.
    fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() >= MAX_KEYS {
            self.sweep();
            if self.limiter.len() >= 2 * MAX_KEYS {
                return Ok(());
            }
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
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
            per_client: Table::new(per_client, DefaultClock::default()),
            per_buyer: Table::new(per_buyer, DefaultClock::default()),
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
            .check(address)
            .map_err(|wait| refusal("from this address", wait))
    }

    /// Counts one reserve, buy or cancel by `buyer`.
    pub fn check_buyer(&self, buyer: Uuid) -> Result<(), ApiError> {
        let Some(table) = &self.per_buyer else {
            return Ok(());
        };
        table
            .check(&buyer)
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
    use governor::clock::FakeRelativeClock;

    fn table(per_second: f64, burst: u32) -> (Table<u32, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Table::new(Rate { per_second, burst }, clock.clone()).unwrap(),
            clock,
        )
    }

    #[test]
    fn lets_a_burst_through_then_the_sustained_rate() {
        let (limit, clock) = table(10.0, 5);
        for _ in 0..5 {
            assert!(limit.check(&1).is_ok());
        }
        let wait = limit.check(&1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another key is not affected.
        assert!(limit.check(&2).is_ok());
        // One interval later, exactly one more request fits.
        clock.advance(Duration::from_millis(100));
        assert!(limit.check(&1).is_ok());
        assert!(limit.check(&1).is_err());
        // After a full refill the whole burst is back.
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            assert!(limit.check(&1).is_ok());
        }
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        let clock = FakeRelativeClock::default();
        assert!(Table::<u8, _>::new(
            Rate {
                per_second: 0.0,
                burst: 10
            },
            clock.clone()
        )
        .is_none());
        assert!(Table::<u8, _>::new(
            Rate {
                per_second: 1.0,
                burst: 0
            },
            clock
        )
        .is_none());
    }

    #[test]
    fn memory_stays_bounded_and_idle_keys_are_forgotten() {
        let (limit, clock) = table(1.0, 1);
        for key in 0..MAX_KEYS as u32 + 10 {
            limit.check(&key).unwrap();
        }
        // Past the first bound busy keys are still limited.
        assert!(limit.check(&0).is_err(), "a busy key is refused");
        for key in MAX_KEYS as u32 + 10..2 * MAX_KEYS as u32 {
            limit.check(&key).unwrap();
        }
        // At twice it, with every key busy, a new key is let through untracked.
        assert!(limit.check(&u32::MAX).is_ok());
        assert!(limit.check(&u32::MAX).is_ok());
        assert_eq!(limit.limiter.len(), 2 * MAX_KEYS);
        // Once they refill, they are forgotten.
        clock.advance(Duration::from_secs(2));
        assert!(limit.check(&u32::MAX).is_ok());
        assert_eq!(limit.limiter.len(), 1);
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
