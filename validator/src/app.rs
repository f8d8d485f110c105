//! The conductor's screens: registration (paste or scan the code), the scanner (camera, image
//! file, pasted payload) with its diagnostics, and the full-screen verdict. Every rule lives in
//! the validator core; this module feeds it frames and shows its answers.

use std::rc::Rc;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use ticketing_client::validator::{Failure, Mode, Outcome, Validator, ValidatorStore, decode_qr};
use ticketing_client::{ClientError, Http};
use ticketing_crypto::presentation::Presentation;
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::redeem::Registration;
use ticketing_protocol::{ErrorCode, Id16};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, HtmlVideoElement};

use crate::store::IdbStore;

/// How long a verdict stays on screen before the next scan.
const VERDICT_MS: u64 = 3500;
/// A payload the camera keeps seeing is decided once; it is decided again only after it has
/// been out of view this long.
const SAME_CODE_SECONDS: u64 = 20;
/// Frames looked at per second, at most.
const FRAME_MS: u64 = 150;
/// Long edge of a frame handed to the decoder.
const MAX_EDGE: u32 = 960;
/// Sync the queue this often when there is one.
const SYNC_EVERY: Duration = Duration::from_secs(60);
/// How long a scan waits for the coordinator before deciding offline (the scan is queued with
/// its id, so an answer that was only late is not counted twice at sync).
const SCAN_TIMEOUT: Duration = Duration::from_secs(4);
/// A spent list older than this is flagged.
const OLD_FILTER_SECONDS: u64 = 15 * 60;

use ticketing_client::browser::{mark, now, perf_ms};

/// What the verdict screen shows: nothing about the passenger.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    class: &'static str,
    word: &'static str,
    detail: String,
}

fn reason_words(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Spent => "Already used",
        ErrorCode::ReplayedEpoch => "This code was already scanned",
        ErrorCode::StaleEpoch => "Old code (a screenshot?): ask for the live ticket",
        ErrorCode::InvalidSignature => "Forged or damaged ticket",
        ErrorCode::Expired => "Expired",
        ErrorCode::NotYetValid => "Not valid yet",
        ErrorCode::Revoked => "Revoked",
        ErrorCode::UnknownKeyset => "Not a ticket of this network",
        ErrorCode::Malformed => "Not a ticket code",
        ErrorCode::NotPrintable => "A printed pass is not valid: ask for the live ticket",
        _ => "Refused",
    }
}

/// Letters in the longest word of `text`: the verdict's headline is sized so it fits a phone.
fn longest_word(text: &str) -> usize {
    text.split_whitespace()
        .map(|w| w.chars().count())
        .max()
        .unwrap_or(1)
}

fn minutes_left(until: u64) -> String {
    let left = until.saturating_sub(now());
    if left >= 2 * 3600 {
        format!("{} h", left / 3600)
    } else {
        format!("{} min", left.div_ceil(60))
    }
}

#[derive(Clone, Copy)]
struct State {
    core: StoredValue<Option<Rc<Validator<IdbStore>>>, LocalStorage>,
    store: StoredValue<Option<IdbStore>, LocalStorage>,
    registered: RwSignal<Option<bool>>,
    error: RwSignal<Option<String>>,
    verdict: RwSignal<Option<Shown>>,
    /// How many verdicts were shown (each one's timer clears only its own).
    shown: StoredValue<u64>,
    busy: RwSignal<bool>,
    /// When the last code was decoded (performance.now), for scan-to-verdict timing.
    decoded_at: StoredValue<Option<f64>>,
    /// Codes decided recently, with when: the camera does not decide them again.
    recent: StoredValue<Vec<(String, u64)>>,
    camera: RwSignal<Option<String>>,
    diag: RwSignal<Diag>,
    /// When the coordinator last confirmed the stored spent list is its newest (this session):
    /// an unchanged list is not old.
    checked_at: StoredValue<Option<u64>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Diag {
    queued: usize,
    held: usize,
    refused: Vec<(String, usize)>,
    last_sync: Option<u64>,
    filter_version: Option<u64>,
    filter_age: Option<u64>,
    offset: i64,
    decode_ms: Option<f64>,
    last_report: Option<String>,
}

impl State {
    fn core(&self) -> Option<Rc<Validator<IdbStore>>> {
        self.core.get_value()
    }

    async fn refresh_diag(&self) {
        let (Some(core), Some(store)) = (self.core(), self.store.get_value()) else {
            return;
        };
        let queued = core.store().queue().await.map_or(0, |q| q.len());
        let held = core.store().refused().await.map_or(0, |r| r.len());
        let log = store.sync_log().await;
        let mut notes = Vec::new();
        let snap = core.snapshot(&mut notes).await.ok().flatten();
        self.diag.update(|d| {
            d.queued = queued;
            d.held = held;
            d.refused = log.refused;
            d.last_sync = log.last_sync;
            d.filter_version = snap.as_ref().map(|s| s.raw.version);
            let checked = self.checked_at.get_value();
            d.filter_age =
                snap.map(|s| now().saturating_sub(s.raw.built_at.max(checked.unwrap_or(0))));
            d.offset = ticketing_client::browser::offset();
        });
    }
}

fn show(state: State, manifest: &Manifest, payload: &str, outcome: &Result<Outcome, Failure>) {
    let product = Presentation::from_text(payload)
        .ok()
        .and_then(|p| {
            manifest
                .keyset(&p.ticket.keyset_id)
                .map(|k| k.params.product.clone())
        })
        .unwrap_or_default();
    let printed = Presentation::from_text(payload).is_ok_and(|p| p.is_printed());
    let shown = match outcome {
        Ok(Outcome::Valid { valid_until, mode }) => Shown {
            class: "verdict valid",
            word: "VALID",
            detail: format!(
                "{product}, {}{}",
                // A printed ticket is spent by this ride: it has no time left to show.
                if printed {
                    "printed: this ride only".to_owned()
                } else {
                    format!("expires in {}", minutes_left(*valid_until))
                },
                match mode {
                    ticketing_client::validator::Mode::Offline => " (offline: queued)",
                    ticketing_client::validator::Mode::Online => "",
                }
            ),
        },
        Ok(Outcome::Invalid { code, .. }) => Shown {
            class: "verdict invalid",
            word: "INVALID",
            detail: reason_words(*code).to_owned(),
        },
        Ok(Outcome::CheckManually) => Shown {
            class: "verdict check",
            word: "CHECK MANUALLY",
            detail: "Offline, and this ticket may have been used: check it by hand".into(),
        },
        Err(Failure::Unauthorized) => Shown {
            class: "verdict check",
            word: "DEVICE NOT REGISTERED",
            detail: "The coordinator refused this device's token: tap \"Register again\" \
                     under Device and scan a new registration code"
                .into(),
        },
        Err(e) => Shown {
            class: "verdict check",
            word: "CHECK MANUALLY",
            detail: format!("No verdict: {e}"),
        },
    };
    state.verdict.set(Some(shown));
    // Read by the benchmark: code decoded (or pasted) to verdict painted.
    if let Some(started) = state.decoded_at.get_value() {
        request_animation_frame(move || mark("lastVerdictMs", perf_ms() - started));
    }
    // Only this verdict's timer may clear it: one dismissed early must not cut the next short.
    let shown_as = state.shown.get_value().wrapping_add(1);
    state.shown.set_value(shown_as);
    set_timeout(
        move || {
            if state.shown.get_value() == shown_as {
                state.verdict.set(None);
            }
        },
        Duration::from_millis(VERDICT_MS),
    );
}

/// Decide on one payload. From the camera (`again` false) a code decided in the last
/// [`SAME_CODE_SECONDS`] is skipped (it is still in front of the lens); a picture or a pasted
/// code is the conductor asking, and is always decided.
fn decide(state: State, payload: String, again: bool) {
    let payload = payload.trim_matches(['\n', '\r', '\t']).to_owned();
    // A registration code still in front of the camera after registering is not a ticket.
    if payload.trim().is_empty() || (!again && payload.starts_with(Registration::PREFIX)) {
        return;
    }
    let idle = !state.busy.get_untracked() && state.verdict.get_untracked().is_none();
    let t = now();
    let mut seen_recently = false;
    state.recent.update_value(|recent| {
        recent.retain(|(_, at)| t < at + SAME_CODE_SECONDS);
        // A code still in view stays suppressed: its time moves on while it is seen, even
        // while a verdict is on screen.
        match recent.iter_mut().find(|(code, _)| *code == payload) {
            Some(entry) => {
                seen_recently = true;
                entry.1 = t;
            }
            None if idle => recent.push((payload.clone(), t)),
            None => {}
        }
    });
    if !idle || (seen_recently && !again) {
        return;
    }
    if again {
        state.decoded_at.set_value(Some(perf_ms()));
    }
    let Some(core) = state.core() else { return };
    // A message about an earlier picture or code is not about this scan.
    state.error.set(None);
    state.busy.set(true);
    spawn_local(async move {
        let id = Id16::random(&mut rand::rng());
        let decision = core.validate(&payload, now(), false, id).await;
        state.busy.set(false);
        if matches!(
            decision.outcome,
            Ok(Outcome::Valid {
                mode: Mode::Online,
                ..
            } | Outcome::Invalid {
                mode: Mode::Online,
                ..
            })
        ) {
            // The coordinator answered, and the snapshot was fetched alongside.
            state.checked_at.set_value(Some(now()));
        }
        show(state, core.manifest(), &payload, &decision.outcome);
        state.refresh_diag().await;
    });
}

async fn sync(state: State) {
    let (Some(core), Some(store)) = (state.core(), state.store.get_value()) else {
        return;
    };
    let (report, failure) = core.sync().await;
    let mut refused: Vec<(String, usize)> = report
        .rejected
        .iter()
        .map(|(c, n)| ((*c).to_owned(), *n))
        .collect();
    for (code, _, _) in &report.conflicts {
        refused.push((format!("conflict: {code}"), 1));
    }
    let text = match &failure {
        Some(f) => format!(
            "sync stopped: {f}; {} scan(s) still queued",
            report.remaining
        ),
        None => format!(
            "synced {}: recorded {}, already synced {}, conflicts {}, refused {}",
            report.sent,
            report.recorded,
            report.already_synced,
            report.conflicts.len(),
            report.rejected_total()
        ),
    };
    if failure.is_none() || report.sent > 0 {
        let _ = store.note_sync(now(), &refused).await;
    }
    state.diag.update(|d| d.last_report = Some(text));
    refresh_filter(state, &core).await;
    state.refresh_diag().await;
}

/// Ask the coordinator for a newer spent list; when it answers, the stored one is current.
async fn refresh_filter(state: State, core: &Validator<IdbStore>) {
    if core.refresh().await.is_ok() {
        state.checked_at.set_value(Some(now()));
    }
}

async fn open_core(state: State, store: IdbStore, manifest_json: &str) -> Result<(), String> {
    let manifest = Manifest::parse_pinned(
        manifest_json.as_bytes(),
        store.pinned_manifest().await.ok().flatten().as_ref(),
    )
    .map_err(|e| e.to_string())?;
    let http = Http::new(SCAN_TIMEOUT).map_err(|e| e.to_string())?;
    let core = Validator::open(manifest, store.clone(), http)
        .await
        .map_err(|e| e.to_string())?;
    measure_offset(&core.manifest().coordinator.url).await;
    if core.refresh().await.is_ok() {
        state.checked_at.set_value(Some(now()));
    }
    state.store.set_value(Some(store));
    state.core.set_value(Some(Rc::new(core)));
    state.registered.set(Some(true));
    state.refresh_diag().await;
    Ok(())
}

/// Register from a code: fetch the coordinator's manifest, check it against the code's digest,
/// keep the token on this device.
async fn register(state: State, code: String) {
    let result: Result<(), String> =
        async {
            let reg = Registration::from_text(code.trim()).map_err(|e| {
                format!(
                    "That is not a whole registration code ({e}): scan or paste the code your \
                     operator gave you, it starts with TKR1:"
                )
            })?;
            let http = Http::new(Duration::from_secs(8)).map_err(|e| e.to_string())?;
            let url = format!("{}/v1/manifest", reg.coordinator_url);
            let bytes = http.get_bytes("coordinator", &url).await.map_err(|e| match e {
            e @ (ClientError::Unreachable { .. }
            | ClientError::NotTaken { .. }
            | ClientError::Unavailable { .. }) => {
                format!("the coordinator cannot be reached ({e}); registration needs a connection")
            }
            other => other.to_string(),
        })?;
            Manifest::parse_pinned(&bytes, Some(&reg.manifest_digest))
                .map_err(|e| e.to_string())?;
            let json =
                String::from_utf8(bytes).map_err(|_| "the manifest is not text".to_owned())?;
            let store = IdbStore::open().await.map_err(|e| e.to_string())?;
            store
                .register(&reg.token, &json, &reg.manifest_digest)
                .await
                .map_err(|e| e.to_string())?;
            open_core(state, store, &json).await
        }
        .await;
    if let Err(e) = result {
        state.error.set(Some(e));
    } else {
        state.error.set(None);
    }
}

async fn boot(state: State) {
    let store = match IdbStore::open().await {
        Ok(s) => s,
        Err(e) => {
            state.error.set(Some(format!(
                "This browser cannot store the validator's state: {e}"
            )));
            return;
        }
    };
    let has_token = store.token().await.ok().flatten().is_some();
    match (has_token, store.manifest_json().await.ok().flatten()) {
        (true, Some(json)) => {
            if let Err(e) = open_core(state, store, &json).await {
                state.error.set(Some(e));
                state.registered.set(Some(false));
            }
        }
        _ => state.registered.set(Some(false)),
    }
}

/// The offset of this device's clock to the coordinator's, from the `Date` of its `/health`
/// (exposed to the apps origin by CORS), else to the apps origin's.
async fn measure_offset(coordinator: &str) {
    let urls = [
        format!("{}/health", coordinator.trim_end_matches('/')),
        "index.html".to_owned(),
    ];
    ticketing_client::browser::measure_offset(&urls).await;
}

fn video() -> Option<HtmlVideoElement> {
    web_sys::window()?
        .document()?
        .get_element_by_id("camera")?
        .dyn_into()
        .ok()
}

async fn start_camera(state: State, hint: &'static str) {
    let result: Result<(), String> = async {
        let devices = web_sys::window()
            .ok_or("no window")?
            .navigator()
            .media_devices()
            .map_err(|_| "this browser has no camera access".to_owned())?;
        let constraints = web_sys::MediaStreamConstraints::new();
        let video_c = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&video_c, &"facingMode".into(), &"environment".into());
        constraints.set_video(&video_c);
        let stream = wasm_bindgen_futures::JsFuture::from(
            devices
                .get_user_media_with_constraints(&constraints)
                .map_err(|_| "the camera cannot be opened".to_owned())?,
        )
        .await
        .map_err(|_| {
            "the camera was refused or is busy: use a picture or paste the code".to_owned()
        })?;
        let stream: web_sys::MediaStream = stream.dyn_into().map_err(|_| "no stream")?;
        let v = video().ok_or("no video element")?;
        v.set_src_object(Some(&stream));
        let _ = v.play();
        Ok(())
    }
    .await;
    match result {
        Ok(()) => state.camera.set(Some(hint.into())),
        Err(e) => state.camera.set(Some(e)),
    }
}

/// One frame: grab, downscale, greyscale, decode.
fn grab_frame(state: State, canvas: &HtmlCanvasElement) -> Option<String> {
    let v = video()?;
    let (w, h) = (v.video_width(), v.video_height());
    if v.ready_state() < 2 || w == 0 || h == 0 {
        return None;
    }
    let scale = (f64::from(MAX_EDGE) / f64::from(w.max(h))).min(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (cw, ch) = ((f64::from(w) * scale) as u32, (f64::from(h) * scale) as u32);
    canvas.set_width(cw);
    canvas.set_height(ch);
    let options = web_sys::ContextAttributes2d::new();
    options.set_will_read_frequently(true);
    let ctx = canvas
        .get_context_with_context_options("2d", &options)
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into::<CanvasRenderingContext2d>().ok())?;
    ctx.draw_image_with_html_video_element_and_dw_and_dh(
        &v,
        0.0,
        0.0,
        f64::from(cw),
        f64::from(ch),
    )
    .ok()?;
    let data = ctx
        .get_image_data(0.0, 0.0, f64::from(cw), f64::from(ch))
        .ok()?;
    let started = perf_ms();
    let found = decode_rgba(cw as usize, ch as usize, &data.data());
    let took = perf_ms() - started;
    state.diag.update(|d| d.decode_ms = Some(took));
    mark("lastDecodeMs", took);
    if found.is_some() {
        state.decoded_at.set_value(Some(started));
    }
    found
}

/// The camera view and its frame loop; each decoded text goes to `on_text`.
#[component]
fn Camera(state: State, hint: &'static str, on_text: fn(State, String)) -> impl IntoView {
    let canvas = NodeRef::<leptos::html::Canvas>::new();
    spawn_local(start_camera(state, hint));
    let handle = set_interval_with_handle(
        move || {
            if let Some(text) = canvas.get_untracked().and_then(|c| grab_frame(state, &c)) {
                on_text(state, text);
            }
        },
        Duration::from_millis(FRAME_MS),
    );
    on_cleanup(move || {
        if let Ok(h) = handle {
            h.clear();
        }
    });
    view! {
        <div class="camera">
            <video id="camera" autoplay=true muted=true playsinline=true aria-label="Camera view"></video>
            <div class="hint" id="camera-hint">{move || state.camera.get().unwrap_or_else(|| "Opening the camera…".into())}</div>
        </div>
        <canvas node_ref=canvas class="hidden"></canvas>
    }
}

fn decode_rgba(w: usize, h: usize, rgba: &[u8]) -> Option<String> {
    let luma: Vec<u8> = rgba
        .chunks_exact(4)
        .map(|p| {
            let [r, g, b, _] = [p[0], p[1], p[2], p[3]].map(u32::from);
            #[allow(clippy::cast_possible_truncation)]
            let y = ((r * 77 + g * 150 + b * 29) >> 8) as u8;
            y
        })
        .collect();
    decode_qr(w, h, &luma)
}

/// A picture the conductor picked (a fallback when there is no camera).
async fn decode_file(file: web_sys::File) -> Option<String> {
    let window = web_sys::window()?;
    let bitmap =
        wasm_bindgen_futures::JsFuture::from(window.create_image_bitmap_with_blob(&file).ok()?)
            .await
            .ok()?
            .dyn_into::<web_sys::ImageBitmap>()
            .ok()?;
    let canvas: HtmlCanvasElement = window
        .document()?
        .create_element("canvas")
        .ok()?
        .dyn_into()
        .ok()?;
    let (w, h) = (bitmap.width(), bitmap.height());
    canvas.set_width(w);
    canvas.set_height(h);
    let ctx: CanvasRenderingContext2d = canvas.get_context("2d").ok()??.dyn_into().ok()?;
    ctx.draw_image_with_image_bitmap(&bitmap, 0.0, 0.0).ok()?;
    let data = ctx
        .get_image_data(0.0, 0.0, f64::from(w), f64::from(h))
        .ok()?;
    decode_rgba(w as usize, h as usize, &data.data())
}

/// The whole page.
#[component]
pub(crate) fn App() -> impl IntoView {
    let state = State {
        core: StoredValue::new_local(None),
        store: StoredValue::new_local(None),
        registered: RwSignal::new(None),
        error: RwSignal::new(None),
        verdict: RwSignal::new(None),
        shown: StoredValue::new(0),
        busy: RwSignal::new(false),
        recent: StoredValue::new(Vec::new()),
        decoded_at: StoredValue::new(None),
        camera: RwSignal::new(None),
        diag: RwSignal::new(Diag::default()),
        checked_at: StoredValue::new(None),
    };
    spawn_local(boot(state));
    // Sync by itself: periodically, and as soon as the device is back online.
    let _ = set_interval_with_handle(
        move || {
            if state.diag.get_untracked().queued > 0 {
                spawn_local(sync(state));
            } else if let Some(core) = state.core() {
                // Keep the spent list fresh while online, for the scans made offline later.
                spawn_local(async move {
                    refresh_filter(state, &core).await;
                    state.refresh_diag().await;
                });
            }
        },
        SYNC_EVERY,
    );
    if let Some(w) = web_sys::window() {
        let back = Closure::<dyn FnMut()>::new(move || spawn_local(sync(state)));
        let _ = w.add_event_listener_with_callback("online", back.as_ref().unchecked_ref());
        back.forget();
    }
    view! {
        <header class="bar"><h1>"Validator"</h1></header>
        <main>
            {move || state.error.get().map(|e| view! { <p class="error" role="alert" id="error">{e}</p> })}
            {move || match state.registered.get() {
                None => view! { <p class="muted" role="status">"Starting…"</p> }.into_any(),
                Some(false) => view! { <Setup state=state/> }.into_any(),
                Some(true) => view! { <Scanner state=state/> }.into_any(),
            }}
        </main>
        {move || state.verdict.get().map(|v| view! {
            <div class=v.class id="verdict" role="alert" aria-live="assertive" on:click=move |_| state.verdict.set(None)>
                <div class="word" style=format!("--n: {}", longest_word(v.word))>{v.word}</div>
                <div class="detail">{v.detail}</div>
                <div class="small">"Next scan in a moment (tap to skip)"</div>
            </div>
        })}
    }
}

#[component]
fn Setup(state: State) -> impl IntoView {
    let code = RwSignal::new(String::new());
    view! {
        <section aria-labelledby="setup-h">
            <h2 id="setup-h">"Register this device"</h2>
            <p class="muted">"Show the camera the registration QR code your operator gave you, or paste its text (it starts with TKR1:). The device token it holds stays on this device."</p>
            <Camera state=state hint="Point the camera at the registration code" on_text=|state, text| {
                if text.starts_with(Registration::PREFIX) && !state.busy.get_untracked() {
                    state.busy.set(true);
                    spawn_local(async move {
                        register(state, text).await;
                        state.busy.set(false);
                    });
                }
            }/>
            <label for="registration">"Or paste the registration code"</label>
            <textarea id="registration" prop:value=move || code.get()
                on:input=move |ev| code.set(event_target_value(&ev))></textarea>
            <div class="row">
                <button class="primary" id="register" prop:disabled=move || state.busy.get()
                    on:click=move |_| {
                        state.busy.set(true);
                        spawn_local(async move {
                            register(state, code.get_untracked()).await;
                            state.busy.set(false);
                        });
                    }>{move || if state.busy.get() { "Registering…" } else { "Register" }}</button>
            </div>
        </section>
    }
}

#[component]
fn Scanner(state: State) -> impl IntoView {
    let pasted = RwSignal::new(String::new());
    let on_file = move |ev: leptos::ev::Event| {
        let input: Option<web_sys::HtmlInputElement> = ev.target().and_then(|t| t.dyn_into().ok());
        let Some(file) = input.and_then(|i| i.files()).and_then(|f| f.get(0)) else {
            return;
        };
        spawn_local(async move {
            match decode_file(file).await {
                Some(text) => decide(state, text, true),
                None => state
                    .error
                    .set(Some("No readable ticket code in that picture".into())),
            }
        });
    };
    let diag = move || state.diag.get();
    view! {
        <Camera state=state hint="Point the camera at the ticket" on_text=|state, text| decide(state, text, false)/>
        <div class="row">
            <label for="picture" class="muted">"Or pick a picture of the code: "</label>
            <input type="file" id="picture" accept="image/*" on:change=on_file/>
        </div>
        <label for="payload">"Or paste the code"</label>
        <textarea id="payload" prop:value=move || pasted.get()
            on:input=move |ev| pasted.set(event_target_value(&ev))></textarea>
        <div class="row">
            <button class="primary" id="check" prop:disabled=move || state.busy.get() on:click=move |_| {
                let text = pasted.get_untracked();
                if text.trim().is_empty() {
                    state.error.set(Some("Paste a ticket's code first (or point the camera at it)".into()));
                    return;
                }
                decide(state, text, true);
                pasted.set(String::new());
            }>{move || if state.busy.get() { "Checking…" } else { "Check" }}</button>
            <button id="sync" on:click=move |_| spawn_local(sync(state))>"Sync now"</button>
        </div>
        <p class="checking" id="checking" role="status" aria-live="polite">
            {move || if state.busy.get() { "Checking the ticket…" } else { "" }}
        </p>
        <section class="diag" aria-labelledby="diag-h">
            <h2 id="diag-h">"Device"</h2>
            <dl>
                <dt>"Queued offline"</dt><dd id="queued">{move || diag().queued}</dd>
                <dt>"Refused at sync, ever"</dt><dd id="refused">{move || {
                    let r = diag().refused;
                    if r.is_empty() { "none".to_owned() } else { r.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", ") }
                }}</dd>
                <dt>"Refused scans kept"</dt><dd id="held">{move || diag().held}
                    <Show when=move || { diag().held > 0 }>
                        " "<button id="retry-refused" on:click=move |_| spawn_local(async move {
                            if let Some(core) = state.core() {
                                let _ = core.store().clear_refused(true).await;
                            }
                            state.refresh_diag().await;
                        })>"Send again"</button>
                        " "<button id="clear-refused" on:click=move |_| spawn_local(async move {
                            if let Some(core) = state.core() {
                                let _ = core.store().clear_refused(false).await;
                            }
                            state.refresh_diag().await;
                        })>"Clear"</button>
                    </Show>
                </dd>
                <dt>"Last sync"</dt><dd id="last-sync">{move || diag().last_sync.map_or("never".to_owned(), |t| format!("{} s ago", now().saturating_sub(t)))}</dd>
                <dt>"Spent list"</dt><dd id="filter" class=move || if diag().filter_age.is_none_or(|a| a > OLD_FILTER_SECONDS) { "warn" } else { "" }>
                    {move || match (diag().filter_version, diag().filter_age) {
                        (Some(v), Some(age)) if age > OLD_FILTER_SECONDS => format!("version {v}, {} min old: connect to refresh", age / 60),
                        (Some(v), Some(age)) => format!("version {v}, {} min old", age / 60),
                        _ => "none yet: connect once".to_owned(),
                    }}
                </dd>
                <dt>"Clock offset"</dt><dd id="offset">{move || format!("{:+} s", diag().offset)}</dd>
                <dt>"Frame decode"</dt><dd id="decode">{move || diag().decode_ms.map_or("–".to_owned(), |m| format!("{m:.0} ms"))}</dd>
            </dl>
            <p class="muted" id="sync-report" aria-live="polite">{move || diag().last_report.unwrap_or_default()}</p>
            <div class="row">
                <button id="register-again" on:click=move |_| {
                    // The queue and the seen set stay; a new code replaces the token.
                    state.error.set(None);
                    state.registered.set(Some(false));
                }>"Register again"</button>
            </div>
        </section>
    }
}
