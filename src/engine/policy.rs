//! The refresh policy: when to refresh, how long to back off, and when a refresh token is about to die: pure
//! functions of the policy, the token's times and a jitter fraction, so tests can check the
//! bounds exactly.

use std::time::Duration;

use crate::api::pb;
use crate::clock::UnixMillis;
use crate::store::{ConnectionRecord, ProfileRecord};

/// On-demand keep-alive refreshes for a refresh-token lifetime shorter than this are not
/// scheduled: a provider that caps a session absolutely would otherwise be asked ever more
/// often as the cap approaches.
const MIN_KEEP_ALIVE_LIFETIME: Duration = Duration::from_secs(600);

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
    /// How long ahead of a refresh token's expected expiry admins are warned.
    pub refresh_token_warning: Duration,
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
    /// (0: not scheduled). On demand, only keep-alive refreshes are scheduled: at 90 % of the
    /// refresh token's idle limit, or of its remaining lifetime where the provider stated one
    /// (`refresh_token_expires_at`, 0 when unknown), whichever comes first.
    pub fn next_refresh_at(
        &self,
        issued_at: UnixMillis,
        expires_at: UnixMillis,
        refresh_token_expires_at: UnixMillis,
        jitter: f64,
    ) -> UnixMillis {
        if self.on_demand {
            let idle = self.max_idle.map(|idle| issued_at + (idle.as_millis() as i64) * 9 / 10);
            let left = refresh_token_expires_at - issued_at;
            let stated = (left > MIN_KEEP_ALIVE_LIFETIME.as_millis() as i64).then(|| issued_at + left * 9 / 10);
            return match (idle, stated) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(0),
            };
        }
        let lifetime = Duration::from_millis((expires_at - issued_at).max(0) as u64);
        expires_at - self.skew(lifetime, jitter).as_millis() as i64
    }

    /// The expected expiry of the refresh token after a successful exchange at `now` (0:
    /// unknown): the lifetime the provider stated for it, and the idle limit counted from now
    /// (this exchange used it), whichever ends first. A reply without a new refresh token and
    /// without a stated lifetime keeps `previous` unless an idle limit applies.
    pub fn refresh_token_expiry(
        &self,
        now: UnixMillis,
        rotated: bool,
        stated: Option<Duration>,
        previous: UnixMillis,
    ) -> UnixMillis {
        let stated = stated.map(|d| now + d.as_millis() as i64);
        let idle = self.max_idle.map(|d| now + d.as_millis() as i64);
        match (stated, idle) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) if rotated => 0,
            (None, None) => previous,
        }
    }

    /// A warning for admins when the connection's refresh token is expected to die within
    /// `refresh_token_warning` and nothing tokend plans will renew it: no refresh is scheduled
    /// before then, refreshes are failing, or the last refresh itself got a token with less than
    /// the warning time to live (an absolute limit a refresh does not extend).
    pub fn refresh_token_warning(&self, c: &ConnectionRecord, now: UnixMillis) -> Option<String> {
        let expires = c.refresh_token_expires_at_ms;
        if expires <= 0 || c.refresh_token_sealed.is_empty() {
            return None;
        }
        let lead = self.refresh_token_warning.as_millis() as i64;
        if expires - now > lead {
            return None;
        }
        let failing = c.status == pb::Status::RefreshFailing as i32;
        let renewal_planned = c.next_refresh_at_ms > 0 && c.next_refresh_at_ms < expires && !failing;
        let renewable = expires - c.last_refreshed_at_ms > lead;
        if renewal_planned && renewable {
            return None;
        }
        let when =
            if expires <= now { "has expired".to_owned() } else { format!("expires in {}", human(expires - now)) };
        let why = if failing {
            "refreshes are failing".to_owned()
        } else if !renewal_planned {
            "no refresh is planned before then".to_owned()
        } else {
            format!("the provider granted it only {} at the last refresh", human(expires - c.last_refreshed_at_ms))
        };
        Some(format!("the refresh token {when} ({why}); an admin must Connect the profile again before it does"))
    }

    /// What an admin should know about the connection now: that no refresh can renew its
    /// token (the provider granted no refresh token), else the refresh-token expiry warning.
    pub fn warning(&self, c: &ConnectionRecord, now: UnixMillis) -> Option<String> {
        if c.not_renewable && !c.access_token_sealed.is_empty() && c.status() != pb::Status::NeedsReauthorization {
            let when = if c.expires_at_ms <= now {
                "has expired".to_owned()
            } else {
                format!("expires in {}", human(c.expires_at_ms - now))
            };
            return Some(format!(
                "the provider granted no refresh token, so the access token cannot be renewed; it {when}, then an \
                 admin must Connect the profile again (ask the provider for offline access: see the README)"
            ));
        }
        self.refresh_token_warning(c, now)
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

/// A span of milliseconds for people: "6 d 23 h", "5 h 10 min", "12 min".
fn human(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes} min"),
        (0, h) => format!("{h} h {minutes} min"),
        (d, h) => format!("{d} d {h} h"),
    }
}

/// The policy the unit tests use: the daemon's defaults, spelled out so the tests' expected
/// times can be checked by hand.
#[cfg(test)]
pub(crate) fn test_policy() -> RefreshPolicy {
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
        refresh_token_warning: Duration::from_secs(7 * 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RefreshPolicy {
        test_policy()
    }

    const DAY: i64 = 86_400_000;

    /// On demand, only keep-alive refreshes are scheduled: at 90 % of the idle limit or of the
    /// stated refresh-token lifetime, whichever is first; short stated lifetimes get none.
    #[test]
    fn on_demand_keep_alive() {
        let mut p = policy();
        p.on_demand = true;
        assert_eq!(p.next_refresh_at(0, 3_600_000, 0, 0.5), 0, "nothing known: nothing scheduled");
        p.max_idle = Some(Duration::from_secs(60 * 86_400));
        assert_eq!(p.next_refresh_at(0, 3_600_000, 0, 0.5), 54 * DAY);
        assert_eq!(p.next_refresh_at(0, 3_600_000, 30 * DAY, 0.5), 27 * DAY);
        assert_eq!(p.next_refresh_at(0, 3_600_000, 300_000, 0.5), 54 * DAY, "a 5-minute session cap: no keep-alive");
    }

    /// The expected refresh-token expiry: stated lifetime and idle limit, the earlier wins.
    #[test]
    fn refresh_token_expiry() {
        let mut p = policy();
        let stated = Some(Duration::from_secs(10 * 86_400));
        assert_eq!(p.refresh_token_expiry(0, true, stated, 0), 10 * DAY);
        assert_eq!(p.refresh_token_expiry(0, true, None, 5 * DAY), 0, "a new token of unknown lifetime");
        assert_eq!(p.refresh_token_expiry(0, false, None, 5 * DAY), 5 * DAY, "the held token keeps its expiry");
        p.max_idle = Some(Duration::from_secs(60 * 86_400));
        assert_eq!(p.refresh_token_expiry(DAY, false, None, 5 * DAY), 61 * DAY, "use resets the idle clock");
        assert_eq!(p.refresh_token_expiry(0, true, stated, 0), 10 * DAY);
    }

    /// Warned within the lead time only when nothing planned renews the refresh token.
    #[test]
    fn refresh_token_warning() {
        let p = policy();
        let held = ConnectionRecord {
            status: pb::Status::Connected as i32,
            refresh_token_sealed: vec![1],
            refresh_token_expires_at_ms: 60 * DAY,
            last_refreshed_at_ms: 0,
            next_refresh_at_ms: 54 * DAY,
            ..Default::default()
        };
        assert_eq!(p.refresh_token_warning(&held, 10 * DAY), None, "far ahead");
        assert_eq!(p.refresh_token_warning(&held, 53 * DAY + 1), None, "a keep-alive refresh renews it");
        let failing = ConnectionRecord { status: pb::Status::RefreshFailing as i32, ..held.clone() };
        let text = p.refresh_token_warning(&failing, 55 * DAY).unwrap();
        assert!(text.contains("expires in 5 d 0 h") && text.contains("failing"), "{text}");
        let unplanned = ConnectionRecord { next_refresh_at_ms: 0, ..held.clone() };
        assert!(p.refresh_token_warning(&unplanned, 54 * DAY).unwrap().contains("no refresh is planned"));
        let capped = ConnectionRecord { last_refreshed_at_ms: 55 * DAY, next_refresh_at_ms: 56 * DAY, ..held.clone() };
        let text = p.refresh_token_warning(&capped, 55 * DAY).unwrap();
        assert!(text.contains("granted it only 5 d 0 h at the last refresh"), "{text}");
        assert!(p.refresh_token_warning(&unplanned, 61 * DAY).unwrap().contains("has expired"));
        let none = ConnectionRecord { refresh_token_sealed: Vec::new(), ..unplanned };
        assert_eq!(p.refresh_token_warning(&none, 59 * DAY), None, "no refresh token held");
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
            let at = p.next_refresh_at(0, lifetime_ms, 0, jitter);
            prop_assert!(at >= lifetime_ms / 2 - 1);
            let floor = (p.skew_floor.as_millis() as i64).min(lifetime_ms / 2);
            prop_assert!(lifetime_ms - at >= floor - 1);
        }
    }
}
