//! When to refresh, and how long to back off: pure functions of the policy, the token's times
//! and a jitter fraction, so tests can check the bounds exactly.

use std::time::Duration;

use crate::api::pb;
use crate::clock::UnixMillis;
use crate::store::ProfileRecord;

/// The refresh policy: daemon defaults, possibly overridden per profile.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Fraction of a token's lifetime refreshed ahead of expiry.
    pub skew_ratio: f64,
    /// The least time ahead of expiry a refresh is due.
    pub skew_floor: Duration,
    /// Extra random skew, as a fraction of the skew.
    pub jitter_ratio: f64,
    /// Lifetime assumed when a provider sends no `expires_in`.
    pub default_lifetime: Duration,
    /// Default `min_valid_for` of `GetAccessToken`.
    pub min_valid_for: Duration,
    /// First retry delay after a transient failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Refresh only when callers need it (and before an idle refresh token dies).
    pub on_demand: bool,
    /// How long a refresh token survives unused, if known.
    pub max_idle: Option<Duration>,
}

impl RefreshPolicy {
    /// This policy with a profile's overrides (and its preset's defaults) applied.
    pub fn for_profile(&self, profile: &ProfileRecord) -> RefreshPolicy {
        let mut policy = self.clone();
        policy.default_lifetime = crate::profile::default_lifetime(profile, self.default_lifetime);
        policy.max_idle = crate::provider::preset(&profile.provider).and_then(|p| p.max_idle);
        if let Some(p) = &profile.refresh_policy {
            if let Some(ratio) = p.skew_ratio {
                policy.skew_ratio = ratio;
            }
            if p.skew_floor_ms > 0 {
                policy.skew_floor = Duration::from_millis(p.skew_floor_ms as u64);
            }
            if p.max_idle_ms > 0 {
                policy.max_idle = Some(Duration::from_millis(p.max_idle_ms as u64));
            }
            policy.on_demand = p.mode == pb::RefreshMode::OnDemand as i32;
        }
        policy
    }

    /// How long before expiry a token of `lifetime` is refreshed: clamp(lifetime × ratio,
    /// floor, lifetime / 2), made up to `jitter_ratio` larger (never past lifetime / 2), so
    /// tokens issued together spread out and short-lived ones are not refreshed in a loop.
    pub fn skew(&self, lifetime: Duration, jitter: f64) -> Duration {
        let half = lifetime / 2;
        let base = lifetime.mul_f64(self.skew_ratio).max(self.skew_floor).min(half);
        base.mul_f64(1.0 + self.jitter_ratio * jitter.clamp(0.0, 1.0)).min(half)
    }

    /// When a token issued at `issued_at` and expiring at `expires_at` is next refreshed
    /// (0: not scheduled).
    pub fn next_refresh_at(&self, issued_at: UnixMillis, expires_at: UnixMillis, jitter: f64) -> UnixMillis {
        if self.on_demand {
            // Keep an idle refresh token alive: refresh at 90% of its idle limit.
            return self.max_idle.map(|idle| issued_at + (idle.as_millis() as i64) * 9 / 10).unwrap_or(0);
        }
        let lifetime = Duration::from_millis((expires_at - issued_at).max(0) as u64);
        expires_at - self.skew(lifetime, jitter).as_millis() as i64
    }

    /// The wait after the `failures`-th consecutive transient failure: exponential from
    /// `backoff_initial`, capped at `backoff_max`, between half and all of that (jitter), and
    /// never shorter than what the provider asked for with `Retry-After` (capped at one hour).
    pub fn backoff(&self, failures: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let base = self.backoff_initial.saturating_mul(1u32 << exponent).min(self.backoff_max);
        let delay = base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        let asked = retry_after.unwrap_or_default().min(Duration::from_secs(3600));
        delay.max(asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            skew_ratio: 0.2,
            skew_floor: Duration::from_secs(120),
            jitter_ratio: 0.1,
            default_lifetime: Duration::from_secs(3600),
            min_valid_for: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            on_demand: false,
            max_idle: None,
        }
    }

    /// A 10-second token is refreshed 5 s ahead (about every 5 s), an hour-long one 12-13.2 min
    /// ahead.
    #[test]
    fn skew_examples() {
        let p = policy();
        assert_eq!(p.skew(Duration::from_secs(10), 0.7), Duration::from_secs(5));
        assert_eq!(p.skew(Duration::from_secs(3600), 0.0), Duration::from_secs(720));
        assert_eq!(p.skew(Duration::from_secs(3600), 1.0), Duration::from_secs(792));
        assert_eq!(p.skew(Duration::from_secs(600), 0.0), Duration::from_secs(120));
    }

    /// Backoff doubles, caps, and honours Retry-After.
    #[test]
    fn backoff_schedule() {
        let p = policy();
        let full: Vec<u64> = (1..=8).map(|n| p.backoff(n, 1.0, None).as_secs()).collect();
        assert_eq!(full, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(p.backoff(1, 0.0, None), Duration::from_millis(2500));
        assert_eq!(p.backoff(1, 0.0, Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(p.backoff(1, 0.0, Some(Duration::from_secs(99999))), Duration::from_secs(3600));
    }

    proptest! {
        /// Whatever the lifetime and jitter, a refresh falls in the second half of the
        /// lifetime and at least min(floor, lifetime/2) before expiry.
        #[test]
        fn refresh_time_bounds(lifetime_ms in 1i64..10_000_000_000, jitter in 0.0f64..1.0) {
            let p = policy();
            let at = p.next_refresh_at(0, lifetime_ms, jitter);
            prop_assert!(at >= lifetime_ms / 2 - 1);
            let floor = (p.skew_floor.as_millis() as i64).min(lifetime_ms / 2);
            prop_assert!(lifetime_ms - at >= floor - 1);
        }
    }
}
