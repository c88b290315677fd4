//! A per-provider rate limit on refreshes (GCRA): a thousand tokens due in the same minute do
//! not hammer one token endpoint. Callers wait their turn; nothing is dropped.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces requests to one provider at `rate` per second, allowing bursts of `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    /// The theoretical arrival time of the next request.
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter of `rate` requests per second with bursts of `burst` (both at least 1).
    pub fn new(rate: f64, burst: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        Self { interval, tolerance: interval * burst.max(1).saturating_sub(1), next: Mutex::new(None) }
    }

    /// Waits until a request may go.
    pub async fn acquire(&self) {
        let now = Instant::now();
        let at = {
            let mut next = self.next.lock().await;
            let tat = next.map_or(now, |t| t.max(now));
            *next = Some(tat + self.interval);
            tat.checked_sub(self.tolerance).unwrap_or(now)
        };
        if at > now {
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst goes at once; the rest are spaced at the rate.
    #[tokio::test(start_paused = true)]
    async fn spaces_after_a_burst() {
        let limiter = RateLimiter::new(5.0, 3);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..7 {
            limiter.acquire().await;
            times.push((Instant::now() - start).as_millis());
        }
        assert_eq!(times, [0, 0, 0, 200, 400, 600, 800]);
    }
}
