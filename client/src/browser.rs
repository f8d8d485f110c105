//! What both browser apps need from the page around the cores (wasm32 only): the cluster's
//! clock (the device's corrected by the offset measured from a `Date` header) and timing marks
//! on `<body data-...>` that the benchmarks read.

use std::cell::Cell;

use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;

thread_local! {
    /// Seconds to add to this device's clock to get the cluster's.
    static OFFSET: Cell<i64> = const { Cell::new(0) };
}

/// The device's clock, milliseconds since the epoch.
pub fn device_ms() -> f64 {
    js_sys::Date::now()
}

/// `performance.now()`, milliseconds since navigation.
pub fn perf_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

/// Unix seconds by the cluster's clock (the device's plus the measured offset).
pub fn now() -> u64 {
    let ms = device_ms();
    if !(ms.is_finite() && ms > 0.0) {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = (ms / 1000.0) as u64;
    s.saturating_add_signed(offset())
}

/// The offset in use, seconds.
pub fn offset() -> i64 {
    OFFSET.with(Cell::get)
}

/// Take the offset from a `Date` header of an answer requested at `sent_ms` and received at
/// `received_ms` (device clock), by the one rule of [`crate::clock::offset_from`].
pub fn set_offset_from(date_header: &str, sent_ms: f64, received_ms: f64) -> Option<i64> {
    let server = crate::clock::parse_http_date(date_header)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs =
        crate::clock::offset_from(server, sent_ms.max(0.0) as u64, received_ms.max(0.0) as u64);
    OFFSET.with(|o| o.set(secs));
    Some(secs)
}

/// Measure the offset from the first of `urls` that answers with a readable `Date` (same
/// origin, or exposed by CORS).
pub async fn measure_offset(urls: &[String]) -> Option<i64> {
    let window = web_sys::window()?;
    for url in urls {
        let sent = device_ms();
        let Ok(resp) = wasm_bindgen_futures::JsFuture::from(window.fetch_with_str(url)).await
        else {
            continue;
        };
        let received = device_ms();
        let Ok(resp) = resp.dyn_into::<web_sys::Response>() else {
            continue;
        };
        if let Ok(Some(date)) = resp.headers().get("date")
            && let Some(secs) = set_offset_from(&date, sent, received)
        {
            return Some(secs);
        }
    }
    None
}

/// Record a timing on `<body data-NAME>` (read by the browser benchmarks).
pub fn mark(name: &str, ms: f64) {
    if let Some(body) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.body())
    {
        let _ = js_sys::Reflect::get(&body, &JsValue::from_str("dataset")).and_then(|ds| {
            js_sys::Reflect::set(
                &ds,
                &JsValue::from_str(name),
                &JsValue::from_str(&format!("{ms:.1}")),
            )
        });
    }
}
