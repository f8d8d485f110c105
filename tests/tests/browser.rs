//! A small WebDriver client for the browser tests: Debian's `chromium` driven by its
//! `chromedriver`, headless, one fresh profile per session. Only what the tests use: navigate,
//! find, click, type, run a script, screenshot, wait for a condition.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether this machine can run the browser tests; `None` skips them, except under
/// `TICKETING_REQUIRE_BROWSER=1` (as in CI), where a missing browser fails the test.
pub(crate) fn available() -> Option<()> {
    let ok = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !ok {
        assert!(
            std::env::var_os("TICKETING_REQUIRE_BROWSER").is_none(),
            "TICKETING_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: no {CHROMIUM} / {CHROMEDRIVER} here");
        return None;
    }
    Some(())
}

/// Where screenshots are kept as test artifacts: `target/pwa-screenshots/`.
pub(crate) fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pwa-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A browser session.
pub(crate) struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver on a free port and open a session (`extra` Chromium arguments).
    pub(crate) async fn start(extra: &[&str]) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let profile = tempfile::tempdir()?;
        let mut browser = Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: format!("http://127.0.0.1:{port}"),
            driver,
            _profile: profile,
        };
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=412,915",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let deadline = Instant::now() + Duration::from_secs(20);
        let session = loop {
            match browser.raw("POST", "/session", Some(&caps)).await {
                Ok(v) => break v,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("opening a WebDriver session")),
            }
        };
        let id = session["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {session}"))?;
        browser.base = format!("{}/session/{id}", browser.base);
        Ok(browser)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(body.unwrap_or(&json!({}))),
        };
        let answer: Value = request.send().await?.json().await?;
        let value = answer["value"].clone();
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            bail!(
                "WebDriver {method} {path}: {error}: {}",
                value["message"].as_str().unwrap_or_default()
            );
        }
        Ok(value)
    }

    /// Run `source` in every page before its own scripts (DevTools `Page.addScriptToEvaluateOnNewDocument`).
    pub(crate) async fn before_each_page(&self, source: &str) -> Result<()> {
        self.raw(
            "POST",
            "/goog/cdp/execute",
            Some(&json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": { "source": source },
            })),
        )
        .await
        .map(|_| ())
    }

    /// Open `url`.
    pub(crate) async fn goto(&self, url: &str) -> Result<()> {
        self.raw("POST", "/url", Some(&json!({ "url": url })))
            .await
            .map(|_| ())
    }

    /// Reload the page.
    pub(crate) async fn reload(&self) -> Result<()> {
        self.raw("POST", "/refresh", None).await.map(|_| ())
    }

    /// The first element matching `css`.
    pub(crate) async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .raw(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": css})),
            )
            .await?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no element id for {css}"))
    }

    /// Click the first element matching `css`.
    pub(crate) async fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.raw("POST", &format!("/element/{id}/click"), None)
            .await
            .map(|_| ())
    }

    /// Replace the text of the input matching `css`.
    pub(crate) async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.raw("POST", &format!("/element/{id}/clear"), None)
            .await?;
        self.raw(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        )
        .await
        .map(|_| ())
    }

    /// Run `script` (a function body; `arguments` holds `args`) and return its value.
    pub(crate) async fn js(&self, script: &str, args: Value) -> Result<Value> {
        self.raw(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The visible text of the page.
    pub(crate) async fn text(&self) -> Result<String> {
        Ok(self
            .js("return document.body.innerText", json!([]))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Wait up to `timeout` until `script` returns a truthy value; returns it.
    pub(crate) async fn wait(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script, json!([])).await?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; the page says:\n{}\nits console:\n{}",
                    self.text().await?,
                    self.console().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the page logged to its console (errors and warnings included).
    pub(crate) async fn console(&self) -> String {
        match self
            .raw("POST", "/se/log", Some(&json!({ "type": "browser" })))
            .await
        {
            Ok(Value::Array(lines)) => lines
                .iter()
                .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(other) => other.to_string(),
            Err(e) => format!("(no console: {e})"),
        }
    }

    /// A PNG of the viewport, also written to the artifacts folder as `name.png`.
    pub(crate) async fn screenshot(&self, name: &str) -> Result<Vec<u8>> {
        use base64::Engine;
        let v = self.raw("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| anyhow!("no screenshot"))?)?;
        std::fs::write(artifacts().join(format!("{name}.png")), &png)?;
        Ok(png)
    }

    /// Close the session and the driver.
    pub(crate) async fn close(mut self) {
        let _ = self.raw("DELETE", "", None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// The text of the QR code in a PNG screenshot.
pub(crate) fn qr_in(png: &[u8]) -> Result<String> {
    let picture = image::load_from_memory_with_format(png, image::ImageFormat::Png)?.to_luma8();
    let (w, h) = (picture.width() as usize, picture.height() as usize);
    ticketing_client::validator::decode_qr(w, h, picture.as_raw())
        .ok_or_else(|| anyhow!("no QR code in the screenshot"))
}

/// A `w` x `h` greyscale picture of `text` as a QR code, `scale` pixels per module, centred.
pub(crate) fn qr_luma(text: &str, w: usize, h: usize, scale: usize) -> Vec<u8> {
    let code =
        qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).unwrap();
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 8) * scale;
    let (x0, y0) = ((w - side) / 2, (h - side) / 2);
    let mut luma = vec![235u8; w * h];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (mx, my) = (i % modules + 4, i / modules + 4);
            for y in 0..scale {
                for x in 0..scale {
                    luma[(y0 + my * scale + y) * w + x0 + mx * scale + x] = 16;
                }
            }
        }
    }
    luma
}

/// A 640x480 4:2:0 video (YUV4MPEG2) of `text` as a QR code, a few identical frames: what
/// Chromium's fake camera plays in a loop.
pub(crate) fn qr_video(text: &str) -> Vec<u8> {
    let (w, h) = (640usize, 480usize);
    let luma = qr_luma(text, w, h, 5);
    let mut video = format!("YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n").into_bytes();
    for _ in 0..10 {
        video.extend_from_slice(b"FRAME\n");
        video.extend_from_slice(&luma);
        video.extend(std::iter::repeat_n(128u8, w * h / 2));
    }
    video
}

/// A PNG picture of `text` as a QR code (a photo a conductor might pick).
pub(crate) fn qr_png(text: &str, path: &std::path::Path) {
    let (w, h) = (600u32, 600u32);
    let luma = qr_luma(text, w as usize, h as usize, 5);
    image::GrayImage::from_raw(w, h, luma)
        .unwrap()
        .save(path)
        .unwrap();
}

impl Browser {
    /// Resize the window (e.g. 1280x800 for a laptop).
    pub(crate) async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.raw(
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        )
        .await
        .map(|_| ())
    }
}

impl Browser {
    /// Run an async `script`: it calls `arguments[0]` with its result.
    pub(crate) async fn js_async(&self, script: &str) -> Result<Value> {
        self.raw(
            "POST",
            "/execute/async",
            Some(&json!({ "script": script, "args": [] })),
        )
        .await
    }
}

impl Browser {
    /// A session whose camera plays `video` (a .y4m, e.g. [`qr_video`]) with the permission
    /// already granted.
    pub(crate) async fn with_camera(video: &std::path::Path) -> Result<Self> {
        let camera = format!("--use-file-for-fake-video-capture={}", video.display());
        Self::start(&[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            &camera,
        ])
        .await
    }
}
