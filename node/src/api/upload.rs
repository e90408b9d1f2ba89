//! How fast an upload (a component blob, an image archive) must arrive.
//! Upload slots are few (`blobs::CONCURRENT_UPLOADS`), so a client that
//! holds one must use it: nothing for `UPLOAD_IDLE`, or on average less than
//! `MIN_RATE` after `RATE_GRACE`, ends the upload with 408 (as Apache's
//! `mod_reqtimeout` MinRate). Without the rate, two clients sending a byte
//! every few seconds kept every other `service create` out indefinitely.

use std::time::{Duration, Instant};

use super::ApiError;

/// How long an upload may send nothing.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);
/// The least average rate, bytes per second (64 MiB in ~68 minutes).
pub const MIN_RATE: u64 = 16 << 10;
/// Before this, any rate is accepted (a slow start, a TCP window opening).
pub const RATE_GRACE: Duration = Duration::from_secs(10);

/// The bytes an upload delivered since it started.
pub struct Pace {
    start: Instant,
    received: u64,
}

impl Pace {
    pub fn start() -> Pace {
        Pace {
            start: Instant::now(),
            received: 0,
        }
    }

    /// Counts `n` more bytes; an error once the average is too slow.
    pub fn add(&mut self, n: usize) -> Result<(), ApiError> {
        self.received += n as u64;
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), ApiError> {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < RATE_GRACE {
            return Ok(());
        }
        if (self.received as f64) < MIN_RATE as f64 * elapsed.as_secs_f64() {
            return Err(ApiError::new(
                408,
                format!(
                    "the upload is too slow: {} bytes in {}s (at least {} KiB/s on average); send it again",
                    self.received,
                    elapsed.as_secs(),
                    MIN_RATE >> 10
                ),
            ));
        }
        Ok(())
    }

    /// The answer to an upload that sent nothing for `UPLOAD_IDLE`.
    pub fn idle() -> ApiError {
        ApiError::new(
            408,
            format!(
                "the upload sent nothing for {}s; send it again",
                UPLOAD_IDLE.as_secs()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_start_is_fine_and_a_trickle_after_the_grace_is_not() {
        let mut p = Pace::start();
        let t0 = p.start;
        p.received = 10;
        assert!(p.check_at(t0 + Duration::from_secs(9)).is_ok());
        let e = p.check_at(t0 + Duration::from_secs(11)).unwrap_err();
        assert_eq!(e.status, 408);
        assert!(e.message.contains("too slow"), "{}", e.message);
        p.received = 11 * MIN_RATE;
        assert!(p.check_at(t0 + Duration::from_secs(11)).is_ok());
    }
}
