//! The screens: tickets (with history), buy (with per-node progress), show (the rotating QR).
//! Every rule lives in the wallet core; this module renders its state and its answers.

use std::rc::Rc;

use leptos::prelude::*;
use leptos::task::spawn_local;
use ticketing_client::wallet::{
    Finished, PayOutcome, Recovered, StoredTicket, TicketStatus, Wallet, WalletStore, status,
};
use ticketing_client::{Client, ClientError, NodeEvent};
use ticketing_crypto::presentation::epoch_at;
use ticketing_protocol::ErrorCode;
use ticketing_protocol::manifest::{Manifest, ManifestError, ProductKind};
use ticketing_protocol::receipt::PaymentMethod;
use ticketing_protocol::voucher::VoucherCode;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::store::{DeviceKeys, IdbStore};

type CoreWallet = Wallet<IdbStore, DeviceKeys>;

struct Core {
    wallet: CoreWallet,
}

use ticketing_client::browser::{mark, now, perf_ms as performance_now};

/// How often a waiting purchase is tried again while the page is open.
const RESUME_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}

/// `12 Dec, 18:00` in the browser's locale and time zone.
fn local_time(unix: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let date = js_sys::Date::new(&JsValue::from_f64(unix as f64 * 1000.0));
    let options = js_sys::Object::new();
    for (k, v) in [
        ("day", "numeric"),
        ("month", "short"),
        ("hour", "2-digit"),
        ("minute", "2-digit"),
    ] {
        let _ = js_sys::Reflect::set(&options, &JsValue::from_str(k), &JsValue::from_str(v));
    }
    date.to_locale_string("default", &options).into()
}

fn price(amount: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", amount / 100, amount % 100)
}

/// A ticket as the list shows it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    index: usize,
    product: String,
    valid_from: u64,
    valid_until: u64,
    status: TicketStatus,
}

/// A ticket's status by its window alone (before the manifest is at hand).
fn window_status(t: &StoredTicket, at: u64) -> TicketStatus {
    if at >= t.valid_until {
        TicketStatus::Expired
    } else if at < t.valid_from {
        TicketStatus::Upcoming
    } else {
        TicketStatus::Active
    }
}

fn rows(manifest: &Manifest, tickets: &[StoredTicket], at: u64) -> Vec<Row> {
    tickets
        .iter()
        .enumerate()
        .map(|(index, t)| Row {
            index,
            product: t.product.clone(),
            valid_from: t.valid_from,
            valid_until: t.valid_until,
            status: status(manifest, t, at),
        })
        .collect()
}

/// One node's part in the purchase under way.
#[derive(Debug, Clone, PartialEq)]
enum NodeState {
    Asked,
    Answered,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Screen {
    Tickets,
    Buy,
    Show(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Boot {
    Loading,
    Ready,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Banner {
    error: bool,
    text: String,
    /// Offer "Retry" (a paid purchase is waiting for nodes).
    retry: bool,
}

/// All signals of the page (Copy handles).
#[derive(Clone, Copy)]
struct State {
    boot: RwSignal<Boot>,
    core: StoredValue<Option<Rc<Core>>, LocalStorage>,
    manifest: RwSignal<Option<Manifest>>,
    tickets: RwSignal<Vec<Row>>,
    waiting: RwSignal<usize>,
    /// Blame evidence as JSON (`ticketing audit --evidence FILE`), when there is any.
    evidence: RwSignal<Option<String>>,
    screen: RwSignal<Screen>,
    banner: RwSignal<Option<Banner>>,
    progress: RwSignal<Vec<(u16, NodeState)>>,
    busy: RwSignal<bool>,
    device_bound: RwSignal<bool>,
    persisted: RwSignal<Option<bool>>,
    update_ready: RwSignal<bool>,
    clock: RwSignal<u64>,
}

impl State {
    fn core(&self) -> Option<Rc<Core>> {
        self.core.get_value()
    }

    fn say(&self, error: bool, text: impl Into<String>) {
        self.banner.set(Some(Banner {
            error,
            text: text.into(),
            retry: false,
        }));
    }

    async fn refresh(&self) {
        let Some(core) = self.core() else { return };
        if let Ok(data) = core.wallet.data().await {
            let manifest = core.wallet.client().manifest();
            self.tickets.set(rows(manifest, &data.tickets, now()));
            self.waiting.set(data.purchases.len());
            self.evidence.set(if data.evidence.is_empty() {
                None
            } else {
                serde_json::to_string_pretty(&data.evidence).ok()
            });
        }
    }
}

fn refusal_words(code: ErrorCode, detail: &str) -> String {
    match code {
        // The detail only repeats the code ("card declined: the card was declined").
        ErrorCode::CardDeclined => "The card was declined. Nothing was charged.".into(),
        ErrorCode::InvalidVoucher => {
            "This voucher code is not valid for this product. Nothing was charged.".into()
        }
        ErrorCode::VoucherUsed => "This voucher was already used. Nothing was charged.".into(),
        ErrorCode::Unavailable => {
            "The payment service is busy or cannot be reached. Nothing was charged; try again \
             in a moment."
                .into()
        }
        ErrorCode::Malformed => format!("The payment was refused: {detail}. Nothing was charged."),
        _ => format!("The payment was refused: {detail} ({code}). Nothing was charged."),
    }
}

fn not_enough_words(e: &ClientError) -> String {
    match e {
        ClientError::NotEnoughNodes {
            needed,
            good,
            failures,
            ..
        } => {
            // Which nodes, not every node's error text: the detail is for the operator.
            let nodes = failures
                .iter()
                .map(|f| format!("node {}", f.node))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "Paid: your tickets are being finished. Only {good} of the {needed} issuer \
                 servers needed answered (not answering: {nodes}). The purchase is kept on \
                 this device and finishes by itself when they are back; you will not pay twice."
            )
        }
        other => format!("{other}"),
    }
}

fn on_progress(state: State) -> impl FnMut(NodeEvent) {
    move |event| match event {
        NodeEvent::Asked { nodes } => state
            .progress
            .set(nodes.into_iter().map(|n| (n, NodeState::Asked)).collect()),
        NodeEvent::Answered { node } => state.progress.update(|p| {
            if let Some(slot) = p.iter_mut().find(|(n, _)| *n == node) {
                slot.1 = NodeState::Answered;
            }
        }),
        NodeEvent::Failed(f) => state.progress.update(|p| {
            if let Some(slot) = p.iter_mut().find(|(n, _)| *n == f.node) {
                slot.1 = NodeState::Failed(f.reason.clone());
            }
        }),
    }
}

/// Finish whatever a reload or a closed tab interrupted: ask payments about unknown payments,
/// then complete every paid purchase.
async fn resume(state: State) {
    let Some(core) = state.core() else { return };
    if core.wallet.data().await.map_or(0, |d| d.purchases.len()) == 0 {
        return;
    }
    if !online() {
        state.say(
            true,
            "A purchase is waiting; it resumes when this device is online.",
        );
        return;
    }
    state.busy.set(true);
    let mut notes = Vec::new();
    if let Ok(found) = core.wallet.recover_receipts().await {
        for f in found {
            if let Recovered::NeverPaid { product } = f {
                notes.push(format!(
                    "A {product} purchase was never paid; it was removed."
                ));
            }
        }
    }
    let mut retry = false;
    match core.wallet.complete_all(&mut on_progress(state)).await {
        Ok(finished) => {
            for f in finished {
                match f {
                    Finished::Bought(done) => notes.push(format!(
                        "Resumed: {} {} ticket(s) added.",
                        done.tickets, done.product
                    )),
                    Finished::AwaitingPayment { product } => notes.push(format!(
                        "A {product} purchase waits for its payment to be confirmed."
                    )),
                    Finished::NotEnoughNodes { error, .. } => {
                        retry = true;
                        notes.push(not_enough_words(&error));
                    }
                    Finished::Failed { error, .. } => notes.push(format!("{error}")),
                }
            }
        }
        Err(e) => notes.push(format!("{e}")),
    }
    state.busy.set(false);
    state.refresh().await;
    if !notes.is_empty() {
        state.banner.set(Some(Banner {
            error: retry,
            text: notes.join(" "),
            retry,
        }));
    }
}

/// Singles that were opened but never scanned are unused again (checked against the
/// coordinator's public spent list; see `Wallet::settle_shown`). Quiet when offline.
async fn settle_shown(state: State) {
    let Some(core) = state.core() else { return };
    if online() && core.wallet.settle_shown(now()).await.is_ok_and(|n| n > 0) {
        state.refresh().await;
    }
}

async fn load_manifest(
    store: &IdbStore,
    pinned: Option<&ticketing_protocol::Digest32>,
) -> Result<(Manifest, String), String> {
    let fetched: Result<String, String> = async {
        let window = web_sys::window().ok_or("no window")?;
        let sent = ticketing_client::browser::device_ms();
        let response = wasm_bindgen_futures::JsFuture::from(window.fetch_with_str("manifest.json"))
            .await
            .map_err(|_| "offline".to_owned())?;
        let received = ticketing_client::browser::device_ms();
        let response: web_sys::Response = response.dyn_into().map_err(|_| "no response")?;
        if !response.ok() {
            return Err(format!("HTTP {}", response.status()));
        }
        if let Ok(Some(date)) = response.headers().get("date") {
            ticketing_client::browser::set_offset_from(&date, sent, received);
        }
        let text = wasm_bindgen_futures::JsFuture::from(response.text().map_err(|_| "no body")?)
            .await
            .map_err(|_| "no body")?;
        text.as_string().ok_or_else(|| "no body".to_owned())
    }
    .await;
    let json = match fetched {
        Ok(json) => json,
        Err(why) => store
            .cached_manifest()
            .await
            .ok_or_else(|| format!("the cluster's manifest could not be loaded ({why})"))?,
    };
    let manifest = Manifest::parse_pinned(json.as_bytes(), pinned).map_err(|e| match e {
        ManifestError::Mismatch { pinned, found } => format!(
            "The cluster's manifest is not the one this wallet trusts (manifest_mismatch: \
             pinned {}…, served {}…). Your tickets are safe on this device; this page will not \
             use another cluster's keys. If the operator announced new keys, they will tell \
             you how to continue.",
            pinned.to_string().chars().take(12).collect::<String>(),
            found.to_string().chars().take(12).collect::<String>()
        ),
        other => other.to_string(),
    })?;
    Ok((manifest, json))
}

async fn boot(state: State) {
    let store = match IdbStore::open().await {
        Ok(s) => s,
        Err(e) => {
            state.boot.set(Boot::Failed(format!(
                "This browser cannot store tickets: {e}"
            )));
            return;
        }
    };
    // The stored tickets on screen at once (status by their window), before the manifest is
    // parsed: a passenger at the gate waits for nothing.
    let stored = store.load().await.unwrap_or_default();
    if !stored.tickets.is_empty() {
        state.tickets.set(
            stored
                .tickets
                .iter()
                .enumerate()
                .map(|(index, t)| Row {
                    index,
                    product: t.product.clone(),
                    valid_from: t.valid_from,
                    valid_until: t.valid_until,
                    status: window_status(t, now()),
                })
                .collect(),
        );
        state.boot.set(Boot::Ready);
        request_animation_frame(move || mark("firstTicketsMs", performance_now()));
    }
    let (manifest, json) = match load_manifest(&store, stored.manifest_digest.as_ref()).await {
        Ok(m) => m,
        Err(e) => {
            state.boot.set(Boot::Failed(e));
            return;
        }
    };
    let keys = DeviceKeys::open(&store).await;
    state
        .device_bound
        .set(ticketing_client::wallet::HolderKeys::device_bound(&keys));
    // Checked by `parse_pinned` (validated, or the pinned one).
    let client = match Client::for_checked(manifest.clone(), std::time::Duration::from_secs(20)) {
        Ok(c) => c,
        Err(e) => {
            state.boot.set(Boot::Failed(e.to_string()));
            return;
        }
    };
    let wallet = match Wallet::open(client, store.clone(), keys).await {
        Ok(w) => w,
        Err(e) => {
            state.boot.set(Boot::Failed(e.to_string()));
            return;
        }
    };
    let _ = store.cache_manifest(&json).await;
    state.manifest.set(Some(manifest));
    state.core.set_value(Some(Rc::new(Core { wallet })));
    state.refresh().await;
    state.boot.set(Boot::Ready);
    // Ask the browser not to evict this site's storage: the tickets live only here.
    if let Some(window) = web_sys::window()
        && let Ok(promise) = window.navigator().storage().persist()
    {
        let persisted = wasm_bindgen_futures::JsFuture::from(promise).await;
        state
            .persisted
            .set(Some(persisted.is_ok_and(|v| v.as_bool() == Some(true))));
    }
    resume(state).await;
    settle_shown(state).await;
}

/// A purchase left waiting (paid but not finished, or its payment's outcome unknown) is tried
/// again when the device comes back online and every half minute while one waits, so
/// "finishes by itself" holds while the page stays open.
fn resume_by_itself(state: State) {
    let again = move || {
        if state.waiting.get_untracked() > 0 && !state.busy.get_untracked() {
            spawn_local(resume(state));
        }
    };
    let _ = set_interval_with_handle(again, RESUME_EVERY);
    if let Some(window) = web_sys::window() {
        let online = Closure::<dyn FnMut()>::new(again);
        let _ = window.add_event_listener_with_callback("online", online.as_ref().unchecked_ref());
        online.forget();
    }
}

fn listen_for_updates(state: State) {
    if let Some(window) = web_sys::window() {
        let on_update = Closure::<dyn FnMut()>::new(move || state.update_ready.set(true));
        let _ = window.add_event_listener_with_callback(
            "ticketing-update-ready",
            on_update.as_ref().unchecked_ref(),
        );
        on_update.forget();
    }
}

fn apply_update() {
    if let Some(window) = web_sys::window()
        && let Ok(event) = web_sys::Event::new("ticketing-apply-update")
    {
        let _ = window.dispatch_event(&event);
    }
}

/// The whole page.
#[component]
pub(crate) fn App() -> impl IntoView {
    let state = State {
        boot: RwSignal::new(Boot::Loading),
        core: StoredValue::new_local(None),
        manifest: RwSignal::new(None),
        tickets: RwSignal::new(Vec::new()),
        waiting: RwSignal::new(0),
        evidence: RwSignal::new(None),
        screen: RwSignal::new(Screen::Tickets),
        banner: RwSignal::new(None),
        progress: RwSignal::new(Vec::new()),
        busy: RwSignal::new(false),
        device_bound: RwSignal::new(true),
        persisted: RwSignal::new(None),
        update_ready: RwSignal::new(false),
        clock: RwSignal::new(now()),
    };
    listen_for_updates(state);
    resume_by_itself(state);
    let tick = set_interval_with_handle(
        move || state.clock.set(now()),
        std::time::Duration::from_millis(500),
    );
    on_cleanup(move || {
        if let Ok(h) = tick {
            h.clear();
        }
    });
    spawn_local(boot(state));

    view! {
        <header class="bar">
            <h1>"Tickets"</h1>
            <nav aria-label="Main">
                <button
                    class:active=move || state.screen.get() != Screen::Buy
                    on:click=move |_| {
                        state.banner.set(None);
                        state.screen.set(Screen::Tickets);
                    }
                >"My tickets"</button>
                <button
                    class:active=move || state.screen.get() == Screen::Buy
                    on:click=move |_| {
                        state.banner.set(None);
                        // The last purchase's per-node progress is not this one's.
                        state.progress.set(Vec::new());
                        state.screen.set(Screen::Buy);
                    }
                >"Buy"</button>
            </nav>
        </header>
        <Show when=move || state.update_ready.get()>
            <div class="update" role="status">
                "A new version of this app is ready. "
                <button on:click=move |_| apply_update()>"Update now"</button>
            </div>
        </Show>
        <main>
            {move || match state.boot.get() {
                Boot::Loading => view! { <p class="muted" role="status">"Opening your wallet…"</p> }.into_any(),
                Boot::Failed(why) => view! {
                    <div class="banner error" role="alert" id="boot-error">{why}</div>
                }.into_any(),
                Boot::Ready => view! { <Ready state=state/> }.into_any(),
            }}
        </main>
    }
}

#[component]
fn Ready(state: State) -> impl IntoView {
    view! {
        {move || state.banner.get().map(|b| view! {
            <div class=if b.error { "banner error" } else { "banner" } role="alert" id="banner">
                <span>{b.text}</span>
                <Show when=move || b.retry>
                    <button prop:disabled=move || state.busy.get()
                        on:click=move |_| spawn_local(resume(state))>"Retry"</button>
                </Show>
            </div>
        })}
        {move || match state.screen.get() {
            Screen::Tickets => view! { <TicketList state=state/> }.into_any(),
            Screen::Buy => view! { <BuyForm state=state/> }.into_any(),
            Screen::Show(i) => view! { <ShowTicket state=state index=i/> }.into_any(),
        }}
    }
}

fn status_class(s: TicketStatus) -> &'static str {
    match s {
        TicketStatus::Active => "status active",
        TicketStatus::Upcoming => "status upcoming",
        TicketStatus::UsedUp | TicketStatus::Expired => "status past",
    }
}

#[component]
fn TicketList(state: State) -> impl IntoView {
    let current = move || {
        state
            .tickets
            .get()
            .into_iter()
            .filter(|r| matches!(r.status, TicketStatus::Active | TicketStatus::Upcoming))
            .collect::<Vec<_>>()
    };
    let history = move || {
        state
            .tickets
            .get()
            .into_iter()
            .filter(|r| matches!(r.status, TicketStatus::Expired | TicketStatus::UsedUp))
            .collect::<Vec<_>>()
    };
    let item = move |r: Row| {
        let i = r.index;
        view! {
            <li>
                <button class="ticket" on:click=move |_| {
                        state.banner.set(None);
                        state.screen.set(Screen::Show(i));
                    }
                    aria-label=format!("Show {} ticket, {}", r.product, r.status.as_str())>
                    <span class="product">{r.product.clone()}</span>
                    <span class=status_class(r.status)>{r.status.as_str()}</span>
                    <span class="window">{format!("{} – {}", local_time(r.valid_from), local_time(r.valid_until))}</span>
                </button>
            </li>
        }
    };
    view! {
        <section aria-labelledby="current-h">
            <h2 id="current-h">"My tickets"</h2>
            <Show when=move || { state.waiting.get() > 0 }>
                <p class="muted" id="waiting">
                    {move || match state.waiting.get() {
                        1 => "1 purchase is waiting to finish. ".to_owned(),
                        n => format!("{n} purchases are waiting to finish. "),
                    }}
                    <button id="finish-now" prop:disabled=move || state.busy.get()
                        on:click=move |_| spawn_local(resume(state))>
                        {move || if state.busy.get() { "Finishing…" } else { "Finish now" }}
                    </button>
                </p>
            </Show>
            {move || {
                let list = current();
                if list.is_empty() && !history().is_empty() {
                    view! { <p class="muted" id="none-current">"No current tickets: the ones below are over."</p> }.into_any()
                } else if list.is_empty() {
                    view! { <p class="muted" id="empty">"No tickets yet. Buy one: it is ready in a moment."</p> }.into_any()
                } else {
                    view! { <ul class="tickets" id="tickets">{list.into_iter().map(item).collect_view()}</ul> }.into_any()
                }
            }}
        </section>
        <Show when=move || !history().is_empty()>
            <section aria-labelledby="history-h">
                <h2 id="history-h">"History"</h2>
                <ul class="tickets history" id="history">{move || history().into_iter().map(item).collect_view()}</ul>
            </section>
        </Show>
        <aside class="notice" aria-label="About this wallet">
            <p>"Your tickets live on this device only: there is no account and no copy elsewhere. Clearing this site's data deletes them."</p>
            {move || if state.device_bound.get() {
                view! { <p id="key-lock">"Each ticket's key is locked to this browser (it cannot be copied out)."</p> }.into_any()
            } else {
                view! { <p id="key-lock" class="warn">"This browser cannot lock a ticket's key to the device (no WebCrypto Ed25519): the app works, but the keys are stored as ordinary data."</p> }.into_any()
            }}
            {move || state.evidence.get().map(|json| {
                let href = format!("data:application/json,{}", String::from(js_sys::encode_uri_component(&json)));
                view! {
                    <p id="evidence">"A node was caught signing wrong answers. "
                        <a href=href download="ticketing-evidence.json">"Save the evidence"</a>
                        " and give it to the cluster's auditors (ticketing audit --evidence FILE); it holds no ticket and nothing about you."</p>
                }
            })}
            {move || match state.persisted.get() {
                Some(true) => view! { <p id="persist">"Storage is persistent: the browser will not clear it on its own."</p> }.into_any(),
                Some(false) => view! { <p id="persist" class="warn">"The browser did not grant persistent storage: it may clear tickets after weeks without use. Installing the app helps."</p> }.into_any(),
                None => view! { <span></span> }.into_any(),
            }}
        </aside>
    }
}

/// A product offered now, with the window its ticket would have.
#[derive(Debug, Clone, PartialEq)]
struct Offer {
    name: String,
    price: String,
    kind: String,
    valid_from: u64,
    valid_until: u64,
}

fn offers(client: &Client, at: u64) -> Vec<Offer> {
    let manifest = client.manifest();
    manifest
        .products
        .iter()
        .filter_map(|p| {
            let k = client.keyset_on_sale(&p.name, at).ok()?;
            Some(Offer {
                name: p.name.clone(),
                price: price(p.price, &p.currency),
                kind: match p.kind {
                    ProductKind::Single {
                        transfer_minutes: 0,
                    } => "single ride".into(),
                    ProductKind::Single { transfer_minutes } => {
                        format!("single ride, transfers for {transfer_minutes} min")
                    }
                    ProductKind::Pass => "unlimited rides".into(),
                },
                valid_from: k.params.valid_from,
                valid_until: k.params.valid_until,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pay {
    Card,
    Voucher,
}

// Long because most of it is one `view!` tree (product list, payment choice, the card and
// voucher fields, per-node progress); the purchase itself is the wallet core's.
#[component]
fn BuyForm(state: State) -> impl IntoView {
    let at = now();
    let list = state
        .core()
        .map(|c| offers(c.wallet.client(), at))
        .unwrap_or_default();
    let first = list.first().map(|o| o.name.clone()).unwrap_or_default();
    let product = RwSignal::new(first);
    let count = RwSignal::new(1u32);
    let pay = RwSignal::new(Pay::Card);
    let card = RwSignal::new(String::from("4242 4242 4242 4242"));
    let voucher = RwSignal::new(String::new());
    let voucher_check = move || {
        let v = voucher.get();
        if v.trim().is_empty() {
            return None;
        }
        Some(match VoucherCode::parse(&v) {
            Ok(_) => Ok("✓ the code is well-formed".to_owned()),
            Err(e) => Err(format!("{e}")),
        })
    };
    let offers_view = list.clone();
    let chosen = move || {
        let name = product.get();
        list.iter().find(|o| o.name == name).cloned()
    };

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if state.busy.get_untracked() {
            return;
        }
        let Some(core) = state.core() else { return };
        if !online() {
            state.say(true, "This device is offline: buying needs a connection. Your tickets still show offline.");
            return;
        }
        let method = match pay.get_untracked() {
            Pay::Card => PaymentMethod::Card {
                number: card.get_untracked(),
            },
            Pay::Voucher => match VoucherCode::parse(&voucher.get_untracked()) {
                Ok(code) => PaymentMethod::Voucher {
                    code: code.to_string(),
                },
                Err(e) => {
                    state.say(
                        true,
                        format!("Check the voucher code: {e}. Nothing was charged."),
                    );
                    return;
                }
            },
        };
        let name = product.get_untracked();
        let n = count.get_untracked().clamp(1, 10);
        state.banner.set(None);
        state.progress.set(Vec::new());
        state.busy.set(true);
        let started = performance_now();
        spawn_local(async move {
            let result = buy(&core, state, &name, n, method).await;
            if result.is_ok() {
                // Read by the browser benchmark: submit to tickets stored.
                mark("lastPurchaseMs", performance_now() - started);
            }
            state.busy.set(false);
            state.refresh().await;
            match result {
                Ok(text) => {
                    state.say(false, text);
                    state.screen.set(Screen::Tickets);
                }
                Err(banner) => {
                    state.banner.set(Some(banner));
                    // The banner is at the top of the page; the button may be far below.
                    if let Some(w) = web_sys::window() {
                        w.scroll_to_with_x_and_y(0.0, 0.0);
                    }
                }
            }
        });
    };

    view! {
        <form class="buy" on:submit=submit aria-labelledby="buy-h">
            <h2 id="buy-h">"Buy a ticket"</h2>
            <fieldset>
                <legend>"Product"</legend>
                {offers_view.into_iter().map(|o| {
                    let name = o.name.clone();
                    let id = format!("product-{}", o.name);
                    let for_id = id.clone();
                    let checked_name = name.clone();
                    view! {
                        <label class="offer" for=for_id>
                            <input type="radio" name="product" id=id value=name.clone()
                                prop:checked=move || product.get() == checked_name
                                on:change=move |_| product.set(name.clone())/>
                            <span class="product">{o.name.clone()}</span>
                            <span class="price">{o.price.clone()}</span>
                            <span class="muted">{o.kind.clone()}</span>
                        </label>
                    }
                }).collect_view()}
            </fieldset>
            <p class="validity" id="validity" aria-live="polite">{move || chosen().map(|o| format!(
                "Valid from {} until {}.", local_time(o.valid_from), local_time(o.valid_until)
            ))}</p>
            <label for="count">"How many"</label>
            <input id="count" type="number" min="1" max="10" prop:value=move || count.get().to_string()
                on:input=move |ev| count.set(event_target_value(&ev).parse().unwrap_or(1))/>
            <fieldset>
                <legend>"Pay with"</legend>
                <label for="pay-card"><input type="radio" name="pay" id="pay-card"
                    prop:checked=move || pay.get() == Pay::Card on:change=move |_| pay.set(Pay::Card)/>"Test card"</label>
                <label for="pay-voucher"><input type="radio" name="pay" id="pay-voucher"
                    prop:checked=move || pay.get() == Pay::Voucher on:change=move |_| pay.set(Pay::Voucher)/>"Cash voucher"</label>
            </fieldset>
            {move || match pay.get() {
                Pay::Card => view! {
                    <label for="card">"Card number"</label>
                    <input id="card" inputmode="numeric" autocomplete="off" prop:value=move || card.get()
                        on:input=move |ev| card.set(event_target_value(&ev))/>
                    <p class="muted">"Test cards: 4242 4242 4242 4242 pays; 4000 0000 0000 0002 is declined. The number goes to the payments service only and is never stored."</p>
                }.into_any(),
                Pay::Voucher => view! {
                    <label for="voucher">"Voucher code"</label>
                    <input id="voucher" autocomplete="off" placeholder="XXXX-XXXX-XXXX-XXXX" prop:value=move || voucher.get()
                        on:input=move |ev| voucher.set(event_target_value(&ev))
                        aria-describedby="voucher-check"/>
                    <p id="voucher-check" aria-live="polite" class=move || match voucher_check() {
                        Some(Err(_)) => "warn", _ => "muted" }>
                        {move || match voucher_check() { Some(Ok(t)) | Some(Err(t)) => t, None => String::new() }}
                    </p>
                }.into_any(),
            }}
            <button type="submit" id="buy" class="primary" disabled=move || state.busy.get()>
                {move || if state.busy.get() { "Buying…" } else { "Pay and get ticket" }}
            </button>
            <Progress state=state/>
        </form>
    }
}

#[component]
fn Progress(state: State) -> impl IntoView {
    view! {
        <Show when=move || !state.progress.get().is_empty()>
            <ul class="nodes" id="progress" aria-label="Issuer nodes" aria-live="polite">
                {move || state.progress.get().into_iter().map(|(n, s)| {
                    let (class, word) = match &s {
                        NodeState::Asked => ("node asked", "asked…".to_owned()),
                        NodeState::Answered => ("node ok", "signed".to_owned()),
                        NodeState::Failed(why) => ("node failed", format!("failed: {why}")),
                    };
                    view! { <li class=class>{format!("Node {n}: {word}")}</li> }
                }).collect_view()}
            </ul>
        </Show>
    }
}

/// Prepare (stored), pay, complete; each outcome in plain words.
async fn buy(
    core: &Core,
    state: State,
    product: &str,
    count: u32,
    method: PaymentMethod,
) -> Result<String, Banner> {
    let error = |text: String| Banner {
        error: true,
        text,
        retry: false,
    };
    let mut rng = rand::rng();
    let digest = core
        .wallet
        .prepare(product, count, now(), &mut rng)
        .await
        .map_err(|e| error(format!("Could not start the purchase: {e}")))?;
    match core.wallet.pay(&digest, method).await {
        Ok(PayOutcome::Paid) => {}
        Ok(PayOutcome::Refused(body)) => return Err(error(refusal_words(body.code, &body.detail))),
        Ok(PayOutcome::Unknown(e)) => {
            return Err(error(format!(
                "The payment service did not answer ({e}), so this device cannot tell yet \
                 whether the payment went through. The purchase is kept here and finishes by \
                 itself once the service answers; you will not pay twice."
            )));
        }
        Err(e) => return Err(error(format!("{e}"))),
    }
    match core.wallet.complete(&digest, &mut on_progress(state)).await {
        Ok(done) => {
            let mut text = format!("{} {} ticket(s) bought.", done.tickets, done.product);
            for node in done.blamed {
                text.push_str(&format!(
                    " Node {node} signed wrong answers: it was not used, and its signed answer is \
                     kept on this device as evidence for the auditors."
                ));
            }
            Ok(text)
        }
        Err(e @ ClientError::NotEnoughNodes { .. }) => Err(Banner {
            error: true,
            text: not_enough_words(&e),
            retry: true,
        }),
        Err(e) => Err(error(format!(
            "The purchase is paid and kept on this device: {e}"
        ))),
    }
}

fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(320, 320)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

#[component]
fn ShowTicket(state: State, index: usize) -> impl IntoView {
    let svg = RwSignal::new(String::new());
    let payload = RwSignal::new(String::new());
    let shown_epoch = RwSignal::new(None::<u32>);
    let failed = RwSignal::new(None::<String>);
    let rotation = state
        .manifest
        .get_untracked()
        .map_or(30, |m| m.rotation_seconds.max(1));
    // Re-sign whenever the epoch changes (the clock ticks twice a second).
    Effect::new(move |_| {
        let t = state.clock.get();
        let epoch = epoch_at(t, rotation);
        if shown_epoch.get_untracked() == Some(epoch) {
            return;
        }
        // Until the wallet is open (a fast offline start shows the list first), wait.
        let Some(core) = state.core() else { return };
        shown_epoch.set(Some(epoch));
        spawn_local(async move {
            match core.wallet.present(index, t).await {
                Ok(p) => {
                    let text = p.to_text();
                    svg.set(qr_svg(&text));
                    payload.set(text);
                    failed.set(None);
                }
                Err(e) => failed.set(Some(e.to_string())),
            }
        });
    });
    let row = move || state.tickets.get().into_iter().find(|r| r.index == index);
    let left = move || rotation - state.clock.get() % rotation;
    view! {
        <section class="show" aria-labelledby="show-h">
            <h2 id="show-h">{move || row().map(|r| format!("{} ticket", r.product))}</h2>
            {move || row().map(|r| view! {
                <p><span class=status_class(r.status) id="status">{r.status.as_str()}</span></p>
                <p class="window" id="window">{format!("Valid {} – {}", local_time(r.valid_from), local_time(r.valid_until))}</p>
            })}
            <div class="qr" id="qr" role="img"
                aria-label="Ticket code for the conductor's scanner; it changes every rotation"
                data-epoch=move || shown_epoch.get().map(|e| e.to_string()).unwrap_or_default()
                inner_html=move || svg.get()></div>
            <p class="countdown" id="countdown" role="timer" aria-live="off">
                {move || format!("New code in {} s", left())}
            </p>
            {move || failed.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
            <p class="muted">"Show this code to the conductor. It renews itself; a screenshot stops working within two minutes. A single ticket's time starts at its first scan, not when you open it."</p>
            <button on:click=move |_| state.screen.set(Screen::Tickets)>"Back to my tickets"</button>
        </section>
    }
}
