//! Per-client rate limits, in memory only. A client is a keyed hash of its address (the key is
//! random per process), so not even the process holds the raw address in the table; nothing is
//! stored or logged. Each (limit, client) pair is a token bucket refilled at its rate; a refusal
//! says how many seconds until the next token (`Retry-After`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Buckets kept before full (idle) ones are dropped.
const PRUNE_ABOVE: usize = 50_000;

/// A rate: `count` per `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period (and the burst); 0 disables the limit.
    pub count: u32,
    /// The period.
    pub seconds: u32,
}

impl Rate {
    /// `count` per minute.
    pub fn per_minute(count: u32) -> Self {
        Self { count, seconds: 60 }
    }

    /// `count` per hour.
    pub fn per_hour(count: u32) -> Self {
        Self {
            count,
            seconds: 3600,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Its own rate (tokens per second) and capacity, for pruning.
    per_second: f64,
    capacity: f64,
}

/// Pruning runs at most this often (it scans the whole table).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Beyond this many buckets even after pruning, the table starts afresh (memory is bounded;
/// the limits loosen for a moment rather than the process growing without end).
const HARD_CAP: usize = 200_000;

/// Token buckets per (limit name, client).
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    hasher: std::collections::hash_map::RandomState,
    buckets: HashMap<(&'static str, u64), Bucket>,
    pruned: Option<Instant>,
}

/// What identifies a client: an IPv4 address, or an IPv6 /64 (one subscriber's prefix: a
/// client must not get fresh buckets by rotating the low bits of its address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

impl Limiter {
    /// Take one token from `client`'s bucket of `limit`; `Err(seconds)` until one is back.
    pub fn take(&self, limit: &'static str, rate: Rate, client: IpAddr) -> Result<(), u64> {
        self.take_at(limit, rate, client, Instant::now())
    }

    /// Whether `client` has a token left in `limit`, without taking it.
    pub fn check(&self, limit: &'static str, rate: Rate, client: IpAddr) -> Result<(), u64> {
        self.apply(limit, rate, client, Instant::now(), false)
    }

    fn take_at(
        &self,
        limit: &'static str,
        rate: Rate,
        client: IpAddr,
        now: Instant,
    ) -> Result<(), u64> {
        self.apply(limit, rate, client, now, true)
    }

    fn apply(
        &self,
        limit: &'static str,
        rate: Rate,
        client: IpAddr,
        now: Instant,
        take: bool,
    ) -> Result<(), u64> {
        if rate.count == 0 || rate.seconds == 0 {
            return Ok(());
        }
        let Ok(mut state) = self.inner.lock() else {
            // A poisoned table limits nothing rather than refusing everyone.
            return Ok(());
        };
        let key = (limit, state.hasher.hash_one(client_key(client)));
        let capacity = f64::from(rate.count);
        let per_second = capacity / f64::from(rate.seconds);
        let due = state
            .pruned
            .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY);
        if state.buckets.len() > PRUNE_ABOVE && due {
            // A bucket that has refilled to its capacity is the same as no bucket.
            state.buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * b.per_second < b.capacity
            });
            if state.buckets.len() > HARD_CAP {
                state.buckets.clear();
            }
            state.pruned = Some(now);
        }
        let bucket = state.buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            at: now,
            per_second,
            capacity,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wait = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64;
        Err(wait)
    }
}

/// The client's address: the connection's peer, or with `trust_forwarded_for` the last hop of
/// `X-Forwarded-For` (the proxy in front appends the address it saw).
pub fn client_of(
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    peer.map(|p| p.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_refill_at_their_rate_and_clients_are_apart() {
        let limiter = Limiter::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let rate = Rate::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take_at("x", rate, a, t0), Ok(()));
        }
        // Empty: one token comes back every 20 s.
        assert_eq!(limiter.take_at("x", rate, a, t0), Err(20));
        assert_eq!(
            limiter.take_at("x", rate, a, t0 + Duration::from_secs(19)),
            Err(1)
        );
        assert_eq!(
            limiter.take_at("x", rate, a, t0 + Duration::from_secs(20)),
            Ok(())
        );
        // Another client, another limit: their own buckets.
        assert_eq!(limiter.take_at("x", rate, b, t0), Ok(()));
        assert_eq!(limiter.take_at("y", rate, a, t0), Ok(()));
        // An IPv6 /64 is one client.
        let (v6a, v6b): (IpAddr, IpAddr) = (
            "2001:db8:1:2::1".parse().unwrap_or(a),
            "2001:db8:1:2:ffff::9".parse().unwrap_or(b),
        );
        let one = Rate::per_minute(1);
        assert_eq!(limiter.take_at("v6", one, v6a, t0), Ok(()));
        assert!(limiter.take_at("v6", one, v6b, t0).is_err());
        // 0 disables.
        for _ in 0..100 {
            assert_eq!(limiter.take_at("z", Rate::per_minute(0), a, t0), Ok(()));
        }
    }
}
