//! `ticketing validate` and `ticketing validator ...` as a conductor runs them, against a real
//! cluster on loopback (payments, nodes and coordinator in this process; the cluster dealt by
//! `ticketing setup` with a `single` that has no transfer window, so a second scan is `spent`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use ticketing_config::Settings;
use ticketing_crypto::presentation::Presentation;
use ticketing_local::{Running, spawn_coordinator, spawn_node, spawn_payments};
use tokio::net::TcpListener;

const PRODUCTS: &str = r#"
[[product]]
name = "single"
kind = "single"
transfer_minutes = 0
price = 250
currency = "EUR"
window = "month"

[[product]]
name = "day"
kind = "pass"
price = 700
currency = "EUR"
window = "month"
"#;

fn ticketing(data_dir: &Path, args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticketing"));
    cmd.args(args)
        .env("TICKETING_DATA_DIR", data_dir)
        .env_remove("TICKETING_CONFIG")
        .env_remove("TICKETING_VALIDATOR_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A 3-node, threshold-2 cluster whose coordinator can be stopped and started again.
struct Rig {
    dir: tempfile::TempDir,
    settings: Settings,
    payments: Option<Running>,
    nodes: Vec<Running>,
    coordinator: Option<Running>,
    coordinator_addr: SocketAddr,
    /// Everything `validate` / `validator sync` printed, for the privacy check.
    printed: std::sync::Mutex<Vec<String>>,
}

impl Rig {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cluster");
        let products = dir.path().join("products.toml");
        std::fs::write(&products, PRODUCTS).unwrap();
        let payments = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let coordinator = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let url = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
        let node_urls: Vec<String> = nodes.iter().map(url).collect();
        let args: Vec<String> = [
            "setup",
            "--nodes",
            "3",
            "--threshold",
            "2",
            "--horizon-days",
            "2",
            "--products",
            products.to_str().unwrap(),
            "--out",
            data.to_str().unwrap(),
            "--payments-url",
            &url(&payments),
            "--coordinator-url",
            &url(&coordinator),
            "--node-urls",
            &node_urls.join(","),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let d = data.clone();
        let o = tokio::task::spawn_blocking(move || ticketing(&d, &args, &[]))
            .await
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));

        let mut settings = Settings::default();
        settings.data_dir.clone_from(&data);
        let coordinator_addr = coordinator.local_addr().unwrap();
        let payments = Some(spawn_payments(&settings, payments).await.unwrap());
        let coordinator = Some(spawn_coordinator(&settings, coordinator).await.unwrap());
        let mut running = Vec::new();
        for (listener, i) in nodes.into_iter().zip(1u16..) {
            running.push(spawn_node(&settings, i, listener).await.unwrap());
        }
        Self {
            dir,
            settings,
            payments,
            nodes: running,
            coordinator,
            coordinator_addr,
            printed: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn data(&self) -> PathBuf {
        self.settings.data_dir.clone()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run the binary off the async runtime (the cluster lives on it).
    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let data = self.data();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let record = matches!(
            args.first().map(String::as_str),
            Some("validate" | "validator")
        ) && args.get(1).map(String::as_str) != Some("register");
        let o = tokio::task::spawn_blocking(move || ticketing(&data, &args, &env))
            .await
            .unwrap();
        if record {
            self.printed.lock().unwrap().push(text(&o));
        }
        o
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    async fn payload(&self, number: &str) -> String {
        let o = self
            .run(&["wallet", "show", number, "--payload-only"])
            .await;
        assert!(o.status.success(), "{}", text(&o));
        stdout(&o)
    }

    async fn buy_singles(&self, count: &str) {
        let o = self
            .run(&[
                "wallet",
                "buy",
                "--product",
                "single",
                "--card",
                "4242424242424242",
                "--count",
                count,
            ])
            .await;
        assert!(o.status.success(), "{}", text(&o));
    }

    /// `validator register --save` into `dir`; returns the token.
    async fn register(&self, name: &str, dir: &Path) -> String {
        let o = self
            .run(&[
                "validator",
                "register",
                "--name",
                name,
                "--save",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .await;
        assert!(o.status.success(), "{}", text(&o));
        let token = stdout(&o);
        assert_eq!(
            token.lines().count(),
            1,
            "only the token on stdout: {token}"
        );
        assert!(token.starts_with("tkv_"), "{token}");
        let saved = std::fs::read_to_string(dir.join("token")).unwrap();
        assert_eq!(saved.trim(), token);
        #[cfg(unix)]
        assert_eq!(mode(&dir.join("token")), 0o600);
        token
    }

    async fn stop_coordinator(&mut self) {
        if let Some(c) = self.coordinator.take() {
            c.stop().await.unwrap();
        }
    }

    async fn start_coordinator(&mut self) {
        let listener = TcpListener::bind(self.coordinator_addr).await.unwrap();
        self.coordinator = Some(spawn_coordinator(&self.settings, listener).await.unwrap());
    }

    /// Ask the coordinator for a new Bloom snapshot now (admin token).
    async fn rebuild_bloom(&self) {
        let o = self
            .run(&["validator", "register", "--name", "ops", "--admin"])
            .await;
        assert!(o.status.success(), "{}", text(&o));
        let admin = stdout(&o);
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/v1/admin/bloom/rebuild",
                self.coordinator_addr
            ))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// No output of the validator names a ticket: no serial, no holder key, no long hex.
    fn assert_nothing_identifying(&self, payloads: &[String]) {
        let printed = self.printed.lock().unwrap();
        assert!(!printed.is_empty());
        for payload in payloads {
            let p = Presentation::from_text(payload).unwrap();
            let serial = p.ticket.serial().to_string();
            let holder = hex::encode(p.ticket.holder.as_bytes());
            for out in printed.iter() {
                assert!(!out.contains(&serial), "serial printed: {out}");
                assert!(!out.contains(&holder), "holder key printed: {out}");
                assert!(!out.contains(payload.as_str()), "payload printed: {out}");
            }
        }
        for out in printed.iter() {
            let longest = out
                .split(|c: char| !c.is_ascii_hexdigit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            assert!(longest < 32, "a long hex string was printed: {out}");
        }
    }

    async fn stop(mut self) {
        self.stop_coordinator().await;
        for n in self.nodes.drain(..) {
            n.stop().await.unwrap();
        }
        if let Some(p) = self.payments.take() {
            p.stop().await.unwrap();
        }
    }
}

fn json_line(o: &Output) -> Value {
    let out = stdout(o);
    assert_eq!(out.lines().count(), 1, "one JSON line: {}", text(o));
    serde_json::from_str(&out).unwrap()
}

fn queue_len(dir: &Path) -> usize {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("queue.json")).unwrap()).unwrap();
    v["scans"].as_array().unwrap().len()
}

/// Flip one character in the middle of a payload (Base45 stays Base45).
fn tamper(payload: &str) -> String {
    let mut chars: Vec<char> = payload.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_validation_accepts_once_then_says_spent() {
    let rig = Rig::start().await;
    let gate = rig.data().join("validator");
    rig.register("gate-1", &gate).await;
    // The registration QR holds a device token: its PNG is written like every secret.
    let png = rig.data().join("qr-1.png");
    let o = rig
        .run(&[
            "validator",
            "register",
            "--name",
            "qr-1",
            "--qr",
            "--png",
            png.to_str().unwrap(),
        ])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    #[cfg(unix)]
    assert_eq!(mode(&png), 0o600);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    rig.buy_singles("3").await;

    // A fresh presentation, as text: valid online.
    let first = rig.payload("1").await;
    let o = rig.run(&["validate", &first]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).starts_with("VALID until "), "{}", text(&o));
    assert!(stdout(&o).ends_with(" UTC (online)"), "{}", text(&o));
    assert!(
        gate.join("bloom.json").exists(),
        "the spent list was not cached: {}",
        text(&o)
    );
    #[cfg(unix)]
    for f in ["bloom.json", "seen.json"] {
        assert_eq!(mode(&gate.join(f)), 0o600, "{f}");
    }

    // The same single on another device: the coordinator says spent.
    let other = rig.path("gate-2");
    let token2 = rig.register("gate-2", &other).await;
    std::fs::remove_file(other.join("token")).unwrap();
    let o = rig
        .run_env(
            &["validate", &first, "--dir", other.to_str().unwrap()],
            &[("TICKETING_VALIDATOR_TOKEN", &token2)],
        )
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stdout(&o), "INVALID: spent", "{}", text(&o));

    // Again on the first device with a fresh code: spent (or, in the same 30 s epoch, a
    // replay this device has seen).
    let again = rig.payload("1").await;
    let o = rig.run(&["validate", &again, "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = json_line(&o);
    assert_eq!(v["verdict"], "invalid");
    assert!(
        v["code"] == "spent" || v["code"] == "replayed_epoch",
        "{}",
        text(&o)
    );

    // From a PNG of the QR code, and from a JPEG of it.
    let png = rig.path("t2.png");
    let o = rig
        .run(&["wallet", "show", "2", "--png", png.to_str().unwrap()])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let second = rig.payload("2").await;
    let o = rig
        .run(&["validate", "--image", png.to_str().unwrap()])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).ends_with("(online)"), "{}", text(&o));

    let png3 = rig.path("t3.png");
    let o = rig
        .run(&["wallet", "show", "3", "--png", png3.to_str().unwrap()])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let third = rig.payload("3").await;
    let jpeg = rig.path("t3.jpg");
    image::open(&png3).unwrap().to_rgb8().save(&jpeg).unwrap();
    assert!(std::fs::read(&jpeg).unwrap().starts_with(&[0xff, 0xd8]));
    let o = rig
        .run(&["validate", "--image", jpeg.to_str().unwrap(), "--json"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = json_line(&o);
    assert_eq!(v["verdict"], "valid", "{v}");
    assert_eq!(v["mode"], "online", "{v}");
    assert!(v["valid_until"].as_u64().unwrap() > 0, "{v}");

    // An image without a QR code is an error, not a verdict.
    let blank = rig.path("blank.png");
    image::GrayImage::from_pixel(200, 200, image::Luma([255u8]))
        .save(&blank)
        .unwrap();
    let o = rig
        .run(&["validate", "--image", blank.to_str().unwrap()])
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no readable QR code"), "{}", text(&o));

    // A tampered payload fails the offline checks, before any request.
    let o = rig.run(&["validate", &tamper(&first), "--json"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = json_line(&o);
    assert!(
        v["code"] == "invalid_signature" || v["code"] == "malformed",
        "{}",
        text(&o)
    );
    let o = rig.run(&["validate", &tamper(&second)]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stdout(&o) == "INVALID: invalid_signature" || stdout(&o) == "INVALID: malformed",
        "{}",
        text(&o)
    );

    // A token the coordinator does not know: exit 2, and what to do about it.
    let fresh = rig.payload("1").await;
    let o = rig
        .run_env(
            &[
                "validate",
                &fresh,
                "--dir",
                rig.path("gate-3").to_str().unwrap(),
            ],
            &[(
                "TICKETING_VALIDATOR_TOKEN",
                "tkv_0000000000000000000000000000000000000000000000000000000000000000",
            )],
        )
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("ticketing validator register"),
        "{}",
        text(&o)
    );

    rig.assert_nothing_identifying(&[first, again, second, third, fresh]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_with_nothing_spent_yet_accepts_and_queues() {
    let mut rig = Rig::start().await;
    let gate = rig.data().join("validator");
    rig.register("gate-1", &gate).await;
    rig.buy_singles("2").await;
    // The first online scan caches the coordinator's first snapshot: nothing spent yet.
    let first = rig.payload("1").await;
    let o = rig.run(&["validate", &first]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(gate.join("bloom.json").exists(), "{}", text(&o));
    rig.stop_coordinator().await;

    let second = rig.payload("2").await;
    let o = rig.run(&["validate", &second]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).ends_with("UTC (offline, queued for sync)"),
        "{}",
        text(&o)
    );
    assert_eq!(queue_len(&gate), 1);
    rig.start_coordinator().await;
    let o = rig.run(&["validator", "sync", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = json_line(&o);
    assert_eq!(v["recorded"], 1, "{v}");
    assert_eq!(v["remaining"], 0, "{v}");
    assert_eq!(queue_len(&gate), 0);
    rig.assert_nothing_identifying(&[first, second]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_scans_are_queued_then_synced() {
    let mut rig = Rig::start().await;
    let gate = rig.data().join("validator");
    rig.register("gate-1", &gate).await;
    let copier = rig.path("gate-copy");
    rig.register("gate-copy", &copier).await;
    rig.buy_singles("2").await;

    // Ticket 1 is used online; the coordinator publishes a snapshot holding it, which both
    // devices cache with their next online scan.
    let first = rig.payload("1").await;
    let o = rig.run(&["validate", &first]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    rig.rebuild_bloom().await;
    let second = rig.payload("2").await;
    let o = rig.run(&["validate", &second]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = rig
        .run(&["validate", &second, "--dir", copier.to_str().unwrap()])
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stdout(&o), "INVALID: spent", "{}", text(&o));
    rig.buy_singles("1").await;

    rig.stop_coordinator().await;

    // Ticket 1 is in the cached filter: check manually, never a silent accept.
    let again = rig.payload("1").await;
    let fresh_dir = rig.path("gate-fresh");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    std::fs::copy(copier.join("bloom.json"), fresh_dir.join("bloom.json")).unwrap();
    let o = rig
        .run(&[
            "validate",
            &again,
            "--dir",
            fresh_dir.to_str().unwrap(),
            "--offline",
        ])
        .await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(stdout(&o), "CHECK MANUALLY (possibly spent)");
    // Same when the coordinator is unreachable rather than skipped.
    let o = rig
        .run(&[
            "validate",
            &again,
            "--dir",
            copier.to_str().unwrap(),
            "--json",
        ])
        .await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(json_line(&o)["verdict"], "check_manually");
    assert!(!copier.join("queue.json").exists());

    // Ticket 3, never used: valid offline, queued.
    let third = rig.payload("3").await;
    let o = rig.run(&["validate", &third]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).ends_with("UTC (offline, queued for sync)"),
        "{}",
        text(&o)
    );
    assert_eq!(queue_len(&gate), 1);
    #[cfg(unix)]
    assert_eq!(mode(&gate.join("queue.json")), 0o600);
    // The same code again on this device: already seen, not queued twice.
    let o = rig.run(&["validate", &third]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stdout(&o), "INVALID: replayed_epoch");
    assert_eq!(queue_len(&gate), 1);
    // A copy of ticket 3 shown to another device, also offline.
    let copy = rig.payload("3").await;
    let o = rig
        .run(&[
            "validate",
            &copy,
            "--dir",
            copier.to_str().unwrap(),
            "--json",
        ])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = json_line(&o);
    assert_eq!(v["verdict"], "valid", "{v}");
    assert_eq!(v["mode"], "offline", "{v}");
    assert_eq!(queue_len(&copier), 1);

    // Sync while the coordinator is down: exit 2, nothing lost.
    let o = rig.run(&["validator", "sync"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(queue_len(&gate), 1);

    rig.start_coordinator().await;
    let o = rig.run(&["validator", "sync"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("recorded 1"), "{}", text(&o));
    assert_eq!(queue_len(&gate), 0);
    let o = rig.run(&["validator", "sync"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), "nothing to sync");

    // The copy conflicts: reported with its code (exit 1), and the queue is emptied.
    let o = rig
        .run(&["validator", "sync", "--dir", copier.to_str().unwrap()])
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stdout(&o).contains("conflicts 1"), "{}", text(&o));
    assert!(stdout(&o).contains("conflict: spent"), "{}", text(&o));
    assert_eq!(queue_len(&copier), 0);
    let o = rig
        .run(&[
            "validator",
            "sync",
            "--dir",
            copier.to_str().unwrap(),
            "--json",
        ])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json_line(&o)["sent"], 0);

    // A device without a token cannot go online: an error naming the fix.
    let later = rig.payload("3").await;
    let o = rig
        .run(&[
            "validate",
            &later,
            "--dir",
            rig.path("gate-3").to_str().unwrap(),
        ])
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("validator register"), "{}", text(&o));
    // The ledger now knows ticket 3, and the conflict put it on the deny list.
    let other = rig.path("gate-4");
    rig.register("gate-4", &other).await;
    let o = rig
        .run(&["validate", &later, "--dir", other.to_str().unwrap()])
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stdout(&o) == "INVALID: revoked" || stdout(&o) == "INVALID: spent",
        "{}",
        text(&o)
    );
    let refused_online = stdout(&o);
    // The device remembers: offline, the same ticket is refused the same way, not accepted
    // until the next spent list says so.
    let offline_again = rig.payload("3").await;
    let o = rig
        .run(&[
            "validate",
            &offline_again,
            "--offline",
            "--dir",
            other.to_str().unwrap(),
        ])
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stdout(&o), refused_online, "{}", text(&o));

    rig.assert_nothing_identifying(&[first, second, again, third, copy, later]);
    rig.stop().await;
}
