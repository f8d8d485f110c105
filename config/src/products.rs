//! Fare products and the validity windows their keysets cover.

use serde::{Deserialize, Serialize};
use ticketing_protocol::manifest::{Product, ProductKind};
use time::{Date, Duration, Month, OffsetDateTime};

use crate::ConfigError;

/// How long one keyset of a product is valid. Windows are aligned to UTC calendar units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// One UTC day.
    Day,
    /// One ISO week (Monday 00:00 UTC to Monday).
    Week,
    /// One calendar month.
    Month,
}

/// A product as written in the products file (`--products FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSpec {
    /// Name, e.g. `single`.
    pub name: String,
    /// `single` or `pass`.
    pub kind: Kind,
    /// For singles: minutes valid after the first scan.
    #[serde(default)]
    pub transfer_minutes: u32,
    /// Price in minor units.
    pub price: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Keyset window.
    pub window: Window,
    /// A window is sold while at least this many minutes of it remain; after that, the next
    /// window is (so a day pass bought at 23:59 is tomorrow's, not one minute of today's).
    #[serde(default)]
    pub min_remaining_minutes: u32,
}

/// Product kind in the products file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Spent at first scan.
    Single,
    /// Valid for its window.
    Pass,
}

/// The products file: `[[product]]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductsFile {
    /// The products.
    pub product: Vec<ProductSpec>,
}

/// Built-in products when no file is given.
pub const DEFAULT_PRODUCTS: &str = r#"
[[product]]
name = "single"
kind = "single"
transfer_minutes = 90
price = 250
currency = "EUR"
window = "month"
min_remaining_minutes = 10

[[product]]
name = "day"
kind = "pass"
price = 700
currency = "EUR"
window = "day"
min_remaining_minutes = 120

[[product]]
name = "week"
kind = "pass"
price = 2500
currency = "EUR"
window = "week"
min_remaining_minutes = 1440
"#;

impl ProductsFile {
    /// Parse and check a products file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: Self = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            key: "products",
            reason: e.to_string(),
        })?;
        if file.product.is_empty() {
            return Err(ConfigError::Invalid {
                key: "products",
                reason: "at least one [[product]] is required".into(),
            });
        }
        for (i, p) in file.product.iter().enumerate() {
            let valid_name = !p.name.is_empty()
                && p.name.len() <= 32
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(ConfigError::Invalid {
                    key: "products",
                    reason: format!("product name `{}`: use 1-32 of a-z, 0-9, - and _", p.name),
                });
            }
            if file.product.iter().take(i).any(|q| q.name == p.name) {
                return Err(ConfigError::Invalid {
                    key: "products",
                    reason: format!("product `{}` is listed twice", p.name),
                });
            }
            // The shortest window (a day, or a month of 28 days) must outlast the minimum, or
            // the window "on sale" would skip one.
            let shortest = match p.window {
                Window::Day => 24 * 60,
                Window::Week => 7 * 24 * 60,
                Window::Month => 28 * 24 * 60,
            };
            if p.min_remaining_minutes >= shortest {
                return Err(ConfigError::Invalid {
                    key: "products",
                    reason: format!(
                        "product `{}`: min_remaining_minutes ({}) must be shorter than its \
                         window ({shortest} minutes)",
                        p.name, p.min_remaining_minutes
                    ),
                });
            }
            if p.currency.len() != 3 || !p.currency.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(ConfigError::Invalid {
                    key: "products",
                    reason: format!(
                        "product `{}`: currency must be an ISO 4217 code like EUR",
                        p.name
                    ),
                });
            }
        }
        Ok(file)
    }

    /// The built-in products.
    pub fn builtin() -> Self {
        // The constant is tested to parse.
        Self::parse(DEFAULT_PRODUCTS).unwrap_or(Self {
            product: Vec::new(),
        })
    }
}

impl ProductSpec {
    /// The manifest's view of the product.
    pub fn to_manifest(&self) -> Product {
        Product {
            name: self.name.clone(),
            kind: match self.kind {
                Kind::Single => ProductKind::Single {
                    transfer_minutes: self.transfer_minutes,
                },
                Kind::Pass => ProductKind::Pass,
            },
            price: self.price,
            currency: self.currency.clone(),
            min_remaining_minutes: self.min_remaining_minutes,
        }
    }
}

fn midnight(d: Date) -> u64 {
    let ts = d.midnight().assume_utc().unix_timestamp();
    u64::try_from(ts).unwrap_or(0)
}

fn window_start(w: Window, d: Date) -> Date {
    match w {
        Window::Day => d,
        Window::Week => d - Duration::days(i64::from(d.weekday().number_days_from_monday())),
        Window::Month => d.replace_day(1).unwrap_or(d),
    }
}

/// The start of the window after the one starting at `start` (`None` past the calendar's end).
fn next_start(w: Window, start: Date) -> Option<Date> {
    match w {
        Window::Day => start.checked_add(Duration::days(1)),
        Window::Week => start.checked_add(Duration::days(7)),
        Window::Month => {
            let (y, m) = if start.month() == Month::December {
                (start.year().checked_add(1)?, Month::January)
            } else {
                (start.year(), start.month().next())
            };
            Date::from_calendar_date(y, m, 1).ok()
        }
    }
}

/// The windows `[valid_from, valid_until)` that overlap `[from, from + horizon_days days)`.
pub fn windows(w: Window, from_unix: u64, horizon_days: u32) -> Vec<(u64, u64)> {
    let Ok(from) = OffsetDateTime::from_unix_timestamp(i64::try_from(from_unix).unwrap_or(0))
    else {
        return Vec::new();
    };
    let end = midnight(from.date()).saturating_add(u64::from(horizon_days).saturating_mul(86_400));
    let mut start = window_start(w, from.date());
    let mut out = Vec::new();
    while let Some(next) = next_start(w, start) {
        let (a, b) = (midnight(start), midnight(next));
        if a >= end.max(from_unix.saturating_add(1)) {
            break;
        }
        out.push((a, b));
        start = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_products_parse() {
        assert_eq!(ProductsFile::builtin().product.len(), 3);
    }

    #[test]
    fn windows_are_calendar_aligned_and_contiguous() {
        // 2026-11-21 (a Saturday) 13:00 UTC.
        let now = 1_795_266_000;
        let days = windows(Window::Day, now, 3);
        assert_eq!(days.len(), 3);
        assert_eq!(days[0], (1_795_219_200, 1_795_305_600));
        let weeks = windows(Window::Week, now, 10);
        // Monday 2026-11-16 .. covering through 2026-12-01.
        assert_eq!(weeks[0].0, 1_795_219_200 - 5 * 86_400);
        let months = windows(Window::Month, now, 31);
        assert_eq!(months.len(), 2);
        // November 2026 has 30 days; December starts right after.
        assert_eq!(months[0].1 - months[0].0, 30 * 86_400);
        assert_eq!(months[0].1, months[1].0);
        for w in [days, weeks, months] {
            assert!(w.windows(2).all(|p| p[0].1 == p[1].0));
            assert!(w[0].0 <= now && now < w[0].1);
        }
    }

    #[test]
    fn bad_products_are_refused_with_the_reason() {
        let e = ProductsFile::parse("product = []").unwrap_err().to_string();
        assert!(e.contains("at least one"), "{e}");
        let twice = format!(
            "{DEFAULT_PRODUCTS}\n[[product]]\nname = \"day\"\nkind = \"pass\"\nprice = 1\ncurrency = \"EUR\"\nwindow = \"day\"\n"
        );
        let e = ProductsFile::parse(&twice).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = ProductsFile::parse("[[product]]\nname = \"x\"\nkind = \"pass\"\nprice = 1\ncurrency = \"EUR\"\nwindow = \"year\"\n").unwrap_err().to_string();
        assert!(e.contains("year"), "{e}");
    }
}
