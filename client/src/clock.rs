//! The cluster's clock as a wallet or validator estimates it: every answer of a node, the
//! payments service or the coordinator carries a `Date` header; the offset between it and this
//! device's clock (taken at the request's midpoint) corrects the device's time before a
//! presentation is signed or checked. One rule for the CLI and both browser apps.

use std::sync::{Arc, Mutex};

/// Offsets this small are measurement noise (`Date` has a resolution of one second): 0.
pub const NOISE_SECONDS: i64 = 2;

/// This device's clock, milliseconds since the Unix epoch.
#[cfg(not(target_arch = "wasm32"))]
pub fn device_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This device's clock, milliseconds since the Unix epoch.
#[cfg(target_arch = "wasm32")]
pub fn device_ms() -> u64 {
    let ms = js_sys::Date::now();
    if ms.is_finite() && ms > 0.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = ms as u64;
        ms
    } else {
        0
    }
}

/// Parse an HTTP date in its preferred form (RFC 9110 IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) to unix seconds.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let mut parts = text.trim().split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let (h, m, s): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let days = u64::try_from(days).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The seconds to add to this device's clock to get the server's, from a `Date` of
/// `server_secs` on an answer requested at `sent_ms` and received at `received_ms` (device
/// clock). `Date` truncates to the second, so the server's true time is half a second later
/// on average; it is compared with the request's midpoint. Under [`NOISE_SECONDS`]: 0.
pub fn offset_from(server_secs: u64, sent_ms: u64, received_ms: u64) -> i64 {
    let server_ms = i128::from(server_secs) * 1000 + 500;
    let midpoint = (i128::from(sent_ms) + i128::from(received_ms)) / 2;
    let secs = (server_ms - midpoint) as f64 / 1000.0;
    #[allow(clippy::cast_possible_truncation)]
    let secs = secs.round() as i64;
    if secs.abs() < NOISE_SECONDS { 0 } else { secs }
}

/// A measured offset and when (device clock, unix seconds) it was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// Seconds to add to the device's clock.
    pub offset: i64,
    /// Unix seconds (device clock) of the measurement.
    pub at: u64,
}

impl Measured {
    /// `device_secs` corrected by the offset.
    pub fn correct(&self, device_secs: u64) -> u64 {
        device_secs.saturating_add_signed(self.offset)
    }
}

/// The latest offset measured from answers, shared by every clone of an [`crate::Http`].
#[derive(Debug, Clone, Default)]
pub struct ClockOffset(Arc<Mutex<Option<Measured>>>);

impl ClockOffset {
    /// Record the `Date` of an answer (ignored if it does not parse).
    pub fn observe(&self, date: &str, sent_ms: u64, received_ms: u64) {
        if let Some(server) = parse_http_date(date)
            && let Ok(mut m) = self.0.lock()
        {
            *m = Some(Measured {
                offset: offset_from(server, sent_ms, received_ms),
                at: received_ms / 1000,
            });
        }
    }

    /// The latest measurement, if any answer carried a `Date`.
    pub fn get(&self) -> Option<Measured> {
        self.0.lock().ok().and_then(|m| *m)
    }
}

/// Unix seconds by the cluster's clock: the device's, corrected by `measured` if known.
pub fn cluster_now(measured: Option<Measured>) -> u64 {
    let device = device_ms() / 1000;
    measured.map_or(device, |m| m.correct(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_and_offsets_are_taken_at_the_midpoint() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 01 Dec 2026 15:43:06 GMT"),
            Some(1_796_139_786)
        );
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(1_709_164_800)
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        // Server 45 s ahead; a 200 ms round trip.
        let sent = 1_000_000_000;
        assert_eq!(offset_from(1_000_045, sent, sent + 200), 45);
        assert_eq!(offset_from(999_955, sent, sent + 200), -45);
        // Within a second or so: noise.
        assert_eq!(offset_from(1_000_001, sent, sent + 200), 0);
        let c = ClockOffset::default();
        assert_eq!(c.get(), None);
        c.observe("not a date", 0, 0);
        assert_eq!(c.get(), None);
        c.observe(
            "Tue, 01 Dec 2026 15:43:06 GMT",
            1_796_139_741_000,
            1_796_139_741_100,
        );
        assert_eq!(c.get().map(|m| m.offset), Some(45));
    }
}
