//! Failed authentications counted per peer: after `max_failures` within `window` a peer is
//! refused for `block`, whatever it presents, so guessing tokens or flooding the log with
//! refusals costs the guesser, not the daemon. A peer is an IP address (an IPv6 address counts
//! by its /64, which one host usually owns whole) or, on the Unix socket, a uid.
//!
//! Successful callers pay one atomic load while no peer has failed recently, and a read of one
//! shard of a sharded map otherwise; only failures write. At most `max_peers` peers are
//! tracked, so a flood from many addresses cannot grow memory.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::AuthLimitConfig;

/// Who failed: the unit failures are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 address, or the /64 prefix of an IPv6 address.
    Ip(IpAddr),
    /// The uid of a process on the Unix socket.
    Uid(u32),
}

impl PeerKey {
    /// The key of an address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Ip(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

/// One peer's recent failures.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// When the current counting window began.
    window_start: Instant,
    /// Failures in that window.
    failures: u32,
    /// Refused until then, if blocked.
    blocked_until: Option<Instant>,
}

impl Record {
    /// Nothing left to remember: the window is over and no block is running.
    fn stale(&self, now: Instant, window: Duration) -> bool {
        self.blocked_until.is_none_or(|until| until <= now)
            && now.saturating_duration_since(self.window_start) >= window
    }
}

/// What [`PeerLimiter::failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; the peer may keep trying.
    Counted,
    /// This failure blocked the peer for the configured time.
    Blocked(Duration),
    /// Not counted: the table is full of peers with recent failures.
    Untracked,
    /// Limiting is off.
    Off,
}

/// Failed authentications per peer; see the module documentation.
#[derive(Debug)]
pub struct PeerLimiter {
    max_failures: u32,
    window: Duration,
    block: Duration,
    max_peers: usize,
    peers: DashMap<PeerKey, Record>,
    /// Entries in `peers`, read on every request: zero means nobody to refuse, without
    /// touching the map (`DashMap::len` would lock every shard).
    tracked: AtomicUsize,
    /// When stale entries were last swept out; sweeps run on the failure path at most once
    /// per window.
    last_sweep: Mutex<Option<Instant>>,
}

impl PeerLimiter {
    /// A limiter with the configured thresholds; `max_failures = 0` turns it off.
    pub fn new(config: &AuthLimitConfig) -> Self {
        Self {
            max_failures: config.max_failures,
            window: Duration::from_secs(config.window_secs),
            block: Duration::from_secs(config.block_secs),
            max_peers: config.max_peers,
            peers: DashMap::new(),
            tracked: AtomicUsize::new(0),
            last_sweep: Mutex::new(None),
        }
    }

    /// Whether any peer has failed recently; when not, nobody is refused and callers need not
    /// work out who the peer is.
    pub fn is_idle(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) == 0
    }

    /// How long `peer` is still refused, if it is blocked at `now`.
    pub fn blocked_for(&self, peer: PeerKey, now: Instant) -> Option<Duration> {
        if self.is_idle() {
            return None;
        }
        let until = self.peers.get(&peer)?.blocked_until?;
        until.checked_duration_since(now).filter(|left| !left.is_zero())
    }

    /// Counts a failed authentication by `peer` at `now`.
    pub fn failed(&self, peer: PeerKey, now: Instant) -> FailureOutcome {
        if self.max_failures == 0 {
            return FailureOutcome::Off;
        }
        self.sweep_if_due(now);
        if !self.peers.contains_key(&peer) && self.tracked.load(Ordering::Relaxed) >= self.max_peers {
            return FailureOutcome::Untracked;
        }
        let mut inserted = false;
        let mut entry = self.peers.entry(peer).or_insert_with(|| {
            inserted = true;
            Record { window_start: now, failures: 0, blocked_until: None }
        });
        if inserted {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        let record = entry.value_mut();
        if record.blocked_until.is_some_and(|until| until > now) {
            // Already refused; requests during a block do not extend it.
            return FailureOutcome::Counted;
        }
        if record.stale(now, self.window) || record.blocked_until.is_some() {
            *record = Record { window_start: now, failures: 0, blocked_until: None };
        }
        record.failures += 1;
        if record.failures >= self.max_failures {
            record.blocked_until = Some(now + self.block);
            return FailureOutcome::Blocked(self.block);
        }
        FailureOutcome::Counted
    }

    /// Drops entries with nothing left to remember, at most once per window (or at once when
    /// the table is full), so the table holds only recent offenders.
    fn sweep_if_due(&self, now: Instant) {
        let full = self.tracked.load(Ordering::Relaxed) >= self.max_peers;
        let interval = if full { Duration::from_secs(1) } else { self.window };
        {
            let Ok(mut last) = self.last_sweep.lock() else { return };
            if last.is_some_and(|at| now.saturating_duration_since(at) < interval) {
                return;
            }
            *last = Some(now);
        }
        let window = self.window;
        self.peers.retain(|_, record| {
            let keep = !record.stale(now, window);
            if !keep {
                self.tracked.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_failures: u32, max_peers: usize) -> PeerLimiter {
        PeerLimiter::new(&AuthLimitConfig { max_failures, window_secs: 60, block_secs: 30, max_peers })
    }

    fn ip(text: &str) -> PeerKey {
        PeerKey::of_ip(text.parse().unwrap())
    }

    /// The Nth failure within the window blocks for the block time; then the peer starts over.
    #[test]
    fn blocks_after_max_failures_then_forgives() {
        let limiter = limiter(3, 10);
        let t0 = Instant::now();
        let peer = ip("192.0.2.1");
        assert!(limiter.is_idle());
        assert_eq!(limiter.failed(peer, t0), FailureOutcome::Counted);
        assert_eq!(limiter.failed(peer, t0 + Duration::from_secs(1)), FailureOutcome::Counted);
        assert_eq!(limiter.blocked_for(peer, t0 + Duration::from_secs(1)), None);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(limiter.failed(peer, t2), FailureOutcome::Blocked(Duration::from_secs(30)));
        assert_eq!(limiter.blocked_for(peer, t2 + Duration::from_secs(10)), Some(Duration::from_secs(20)));
        assert_eq!(limiter.blocked_for(ip("192.0.2.2"), t2), None, "other peers are not affected");
        assert_eq!(limiter.failed(peer, t2 + Duration::from_secs(5)), FailureOutcome::Counted);
        assert_eq!(
            limiter.blocked_for(peer, t2 + Duration::from_secs(29)),
            Some(Duration::from_secs(1)),
            "not extended"
        );
        let after = t2 + Duration::from_secs(30);
        assert_eq!(limiter.blocked_for(peer, after), None);
        assert_eq!(limiter.failed(peer, after), FailureOutcome::Counted, "a fresh window after the block");
    }

    /// Failures spread wider than the window never block.
    #[test]
    fn window_expires() {
        let limiter = limiter(2, 10);
        let t0 = Instant::now();
        let peer = PeerKey::Uid(1000);
        assert_eq!(limiter.failed(peer, t0), FailureOutcome::Counted);
        assert_eq!(limiter.failed(peer, t0 + Duration::from_secs(61)), FailureOutcome::Counted);
        assert_eq!(
            limiter.failed(peer, t0 + Duration::from_secs(62)),
            FailureOutcome::Blocked(Duration::from_secs(30))
        );
    }

    /// An IPv6 host counts by its /64; IPv4-mapped addresses count as IPv4.
    #[test]
    fn ipv6_by_prefix() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
    }

    /// The table never holds more than `max_peers`; stale entries make room again.
    #[test]
    fn bounded() {
        let limiter = limiter(5, 2);
        let t0 = Instant::now();
        assert_eq!(limiter.failed(ip("192.0.2.1"), t0), FailureOutcome::Counted);
        assert_eq!(limiter.failed(ip("192.0.2.2"), t0), FailureOutcome::Counted);
        assert_eq!(limiter.failed(ip("192.0.2.3"), t0), FailureOutcome::Untracked);
        assert_eq!(limiter.failed(ip("192.0.2.1"), t0), FailureOutcome::Counted, "known peers still count");
        let later = t0 + Duration::from_secs(61);
        assert_eq!(limiter.failed(ip("192.0.2.3"), later), FailureOutcome::Counted);
        assert_eq!(limiter.peers.len(), 1);
        assert_eq!(limiter.tracked.load(Ordering::Relaxed), 1);
    }

    /// `max_failures = 0` turns the limit off.
    #[test]
    fn off() {
        let limiter = limiter(0, 10);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.failed(ip("192.0.2.1"), t0), FailureOutcome::Off);
        }
        assert!(limiter.is_idle());
    }
}
