//! `ticketing bench`: figures printed from a real run on loopback, never asserted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ticketing_client::Client;
use ticketing_config::Settings;
use ticketing_crypto::issuance::{self, BlindedPoint};
use ticketing_crypto::keyset::{SecretKeyShare, ShareIndex};
use ticketing_crypto::ticket::HolderSecret;
use ticketing_protocol::receipt::PaymentMethod;

use ticketing_local::{Databases, LocalCluster};

mod redeem;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Issue tickets through an in-process 3-of-5 cluster on loopback (SQLite by default).
    Issue(IssueArgs),
    /// Redeem tickets at an in-process coordinator (SQLite, and Postgres with --postgres),
    /// next to this machine's raw ticket-verify rate measured in the same run.
    Redeem(RedeemArgs),
    /// The signed filter of N spent serials: its size on the wire in each form, and the time
    /// to build, encode, decode and verify it.
    Publish(PublishArgs),
}

/// `bench publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Spent serials in the filter.
    #[arg(long, default_value_t = 1_000_000)]
    serials: usize,
    /// False-positive rate (the coordinator's `bloom_fp_rate`).
    #[arg(long, default_value_t = 0.001)]
    fp_rate: f64,
    /// Serials the filter is sized for when fewer are spent (the coordinator's
    /// `bloom_capacity`; 0: sized for the serials).
    #[arg(long, default_value_t = 0)]
    capacity: usize,
    /// Also spend that many singles in a real coordinator's ledger (SQLite, and Postgres with
    /// --postgres), time its full rebuild and publication (`POST /v1/admin/bloom/rebuild`),
    /// then an update after --delta-spends more and the delta a validator fetches.
    #[arg(long)]
    ledger: bool,
    /// Postgres database for the ledger run (e.g. postgres://user:pass@127.0.0.1/bench).
    #[arg(long)]
    postgres: Option<String>,
    /// In the ledger run, singles spent after the full rebuild: the update and the delta a
    /// validator holding the previous version fetches.
    #[arg(long, default_value_t = 10_000)]
    delta_spends: usize,
}

/// `bench redeem`.
#[derive(Debug, Args)]
pub struct RedeemArgs {
    /// Tickets redeemed per run (each once; distinct tickets).
    #[arg(long, default_value_t = 4000)]
    tickets: usize,
    /// Scans per `/v1/redeem/batch` request.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Also run on this Postgres database (e.g. postgres://user:pass@127.0.0.1/bench).
    #[arg(long)]
    postgres: Option<String>,
}

/// `bench issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Tickets bought end to end (one per purchase).
    #[arg(long, default_value_t = 300)]
    tickets: usize,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Batch sizes (tickets per request) for the node-side overhead table.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    batches: Vec<usize>,
    /// Requests per batch size in the overhead table.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// Concurrent wallets for the node-throughput table (one ticket per request).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    wallets: Vec<usize>,
    /// Requests per row of the node-throughput table.
    #[arg(long, default_value_t = 2000)]
    throughput_requests: usize,
}

/// A progress bar on stderr for long work (drawn only on a terminal, so piped figures stay
/// clean).
pub(crate) fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Run a benchmark.
pub async fn run(settings: &Settings, cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Issue(args) => issue(settings, &args).await,
        BenchCommand::Redeem(args) => redeem::run(settings, &args).await,
        BenchCommand::Publish(args) => {
            publish(&args)?;
            if args.ledger {
                publish_from_ledger(settings, &args).await?;
            }
            Ok(())
        }
    }
}

/// Tracing for a bench: quiet by default (per-request info lines would drown the figures); a
/// configured filter other than the default wins, e.g.
/// TICKETING_LOG__FILTER=warn,ticketing_node=debug.
fn init_quiet_tracing(settings: &Settings) {
    let mut log = settings.log.clone();
    if log.filter == ticketing_config::LogSettings::default().filter {
        log.filter = "warn".into();
    }
    ticketing_service::init_tracing(&log);
}

fn card() -> PaymentMethod {
    PaymentMethod::Card {
        number: "4242424242424242".into(),
    }
}

/// Nearest-rank percentile, `per_mille` in 0..=1000 (500 = median).
pub(crate) fn percentile(sorted: &[Duration], per_mille: u64) -> Duration {
    let n = sorted.len() as u64;
    let rank = (per_mille.min(1000) * n).div_ceil(1000).saturating_sub(1);
    sorted
        .get(usize::try_from(rank).unwrap_or(0))
        .copied()
        .unwrap_or_default()
}

fn publish(args: &PublishArgs) -> Result<()> {
    use std::io::Write as _;
    use ticketing_crypto::keyset::KeysetId;
    use ticketing_crypto::ticket::Serial;
    use ticketing_protocol::keys::{Sig, SignKey};
    use ticketing_protocol::publication::{BloomSnapshot, SerialFilter};

    let serials: Vec<Serial> = (0..args.serials).map(|_| Serial(rand::random())).collect();
    let key = SignKey::generate(&mut rand::rng());
    let t0 = Instant::now();
    let filter = SerialFilter::build(serials.iter(), args.capacity, args.fp_rate, &rand::random())?;
    let snapshot = BloomSnapshot {
        version: 1,
        built_at: ticketing_service::now(),
        keysets: vec![KeysetId([1; 8]); 3],
        filter: filter.to_bytes(),
        deny: Vec::new(),
        signature: Sig([0; 64]),
    }
    .sign(&key);
    let built = t0.elapsed();
    let t1 = Instant::now();
    let bytes = snapshot.to_bytes();
    let encoded = t1.elapsed();
    let json = serde_json::to_vec(&snapshot)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes)?;
    let gzipped = gz.finish()?;
    let t2 = Instant::now();
    let back = BloomSnapshot::from_bytes(&bytes)?;
    back.verify(&key.verify_key())?;
    let decoded = back.decode_filter()?;
    let checked = t2.elapsed();
    anyhow::ensure!(
        serials.iter().all(|s| decoded.contains(s)),
        "a serial went missing"
    );
    let mb = |n: usize| n as f64 / 1e6;
    outln!(
        "{} spent serials at {} false positives: filter {:.2} MB ({} bits)",
        args.serials,
        args.fp_rate,
        mb(snapshot.filter.len()),
        filter.bits()
    );
    outln!(
        "  on the wire, bytes (application/octet-stream): {:.2} MB",
        mb(bytes.len())
    );
    outln!(
        "  the same, gzip:                                 {:.2} MB",
        mb(gzipped.len())
    );
    outln!(
        "  as JSON (base64 filter):                        {:.2} MB",
        mb(json.len())
    );
    outln!(
        "  build + sign {:.0} ms, encode {:.1} ms, decode + verify + load {:.0} ms",
        built.as_secs_f64() * 1e3,
        encoded.as_secs_f64() * 1e3,
        checked.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Spend `args.serials` singles in a coordinator's ledger (through its store, as redeemed
/// scans), then time the full rebuild over HTTP (the ledger query, the filter, signing, both
/// encodings and saving the publication), then the update after `args.delta_spends` more and
/// the delta from the version before.
async fn publish_from_ledger(settings: &Settings, args: &PublishArgs) -> Result<()> {
    let mut settings = settings.clone();
    settings.coordinator.bloom_capacity = u32::try_from(args.serials).unwrap_or(u32::MAX);
    settings.coordinator.bloom_fp_rate = args.fp_rate;
    init_quiet_tracing(&settings);
    let mut runs = vec![("SQLite", Databases::default())];
    if let Some(url) = &args.postgres {
        runs.push((
            "Postgres",
            Databases {
                coordinator: Some(url.clone()),
                ..Databases::default()
            },
        ));
    }
    for (name, databases) in runs {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let cluster = LocalCluster::start(dir.path(), 3, 2, settings.clone(), databases).await?;
        ledger_run(name, cluster, args).await?;
    }
    Ok(())
}

/// One ledger run of `bench publish` on a started `cluster` (stopped at the end): fill the
/// ledger, time three full rebuilds, spend more, time the update, fetch and check the delta,
/// print the run's two lines.
async fn ledger_run(name: &str, cluster: LocalCluster, args: &PublishArgs) -> Result<()> {
    use ticketing_protocol::publication::{BloomDelta, BloomSnapshot, DELTA_MAGIC};

    let manifest = cluster.cluster.manifest.clone();
    let now = ticketing_service::now();
    let single = single_valid_at(&manifest, now)?;
    let transfer = 90 * 60;
    // First used long enough ago that every one is past its transfer window: all are in
    // the filter.
    let at = now
        .saturating_sub(transfer + 60)
        .max(single.params.valid_from);
    let (device, admin) = bench_tokens(&cluster.settings).await?;
    let store =
        ticketing_coordinator::store::open(&cluster.settings.coordinator_database_url()).await?;
    let spending = Spending {
        store: &*store,
        single,
        at,
        transfer,
        rotation: manifest.rotation_seconds,
        device,
    };
    let t0 = Instant::now();
    spending
        .spend(
            args.serials,
            &format!("spending {} singles ({name})", args.serials),
        )
        .await?;
    let filled = t0.elapsed();
    let bloom = BloomHttp {
        url: &cluster.coordinator.as_ref().context("no coordinator")?.url,
        http: reqwest::Client::builder().no_gzip().build()?,
        admin: admin.expose(),
    };
    let mut full = Vec::new();
    for _ in 0..3 {
        full.push(bloom.publish(true).await?);
    }
    let held = BloomSnapshot::from_bytes(&bloom.fetch("", false).await?)?;
    spending
        .spend(
            args.delta_spends,
            &format!("spending {} more", args.delta_spends),
        )
        .await?;
    let update = bloom.publish(false).await?;
    let since = format!("?since={}", held.version);
    let delta = bloom.fetch(&since, false).await?;
    let delta_gz = bloom.fetch(&since, true).await?;
    // A delta that would not be smaller than the filter is answered with the whole snapshot.
    let (next, what) = if delta.starts_with(DELTA_MAGIC) {
        let d = BloomDelta::from_bytes(&delta)?;
        let changed = d.changed_bytes();
        (d.apply(&held)?, format!("{changed} filter bytes changed"))
    } else {
        let whole = BloomSnapshot::from_bytes(&delta)?;
        (
            whole,
            "the whole snapshot (a delta would not be smaller)".to_owned(),
        )
    };
    next.verify(&manifest.coordinator.key)?;
    let ms = |t: &std::time::Duration| format!("{:.0}", t.as_secs_f64() * 1e3);
    outln!(
        "\n{name}: {} singles spent in {:.1} s; full rebuild + publish: {} ms; snapshot \
         {:.2} MB on the wire\n{name}: {} more: update + publish {} ms; answer to the \
         version held {:.3} MB ({:.3} MB gzip), {what}",
        args.serials,
        filled.as_secs_f64(),
        full.iter().map(ms).collect::<Vec<_>>().join(", "),
        held.to_bytes().len() as f64 / 1e6,
        args.delta_spends,
        ms(&update),
        delta.len() as f64 / 1e6,
        delta_gz.len() as f64 / 1e6,
    );
    cluster.stop().await
}

/// The single keyset of `manifest` valid at `now`.
fn single_valid_at(
    manifest: &ticketing_protocol::manifest::Manifest,
    now: u64,
) -> Result<&ticketing_protocol::manifest::KeysetInfo> {
    manifest
        .keysets
        .iter()
        .find(|k| {
            k.params.product == "single" && k.params.valid_from <= now && now < k.params.valid_until
        })
        .context("no single keyset valid now")
}

/// Register the ledger run's validator device (`bench`), then its admin token
/// (`bench-admin`): the device's id and the admin token.
async fn bench_tokens(settings: &Settings) -> Result<(i64, ticketing_coordinator::auth::Token)> {
    let (_, device) = ticketing_coordinator::register(
        settings,
        "bench",
        ticketing_coordinator::TokenRole::Validator,
        true,
    )
    .await?;
    let (admin, _) = ticketing_coordinator::register(
        settings,
        "bench-admin",
        ticketing_coordinator::TokenRole::Admin,
        true,
    )
    .await?;
    Ok((device.id, admin))
}

/// Where a ledger run spends its singles: the coordinator's store, the single keyset, the
/// first-use time and the validator device the scans are recorded under.
struct Spending<'a> {
    store: &'a dyn ticketing_coordinator::store::Store,
    single: &'a ticketing_protocol::manifest::KeysetInfo,
    at: u64,
    transfer: u64,
    rotation: u64,
    device: i64,
}

impl Spending<'_> {
    /// Record `n` fresh singles as redeemed scans, 2000 per transaction, under a progress bar
    /// `label`. Listed as the ledger would list them: at their window's end, or now if later.
    async fn spend(&self, n: usize, label: &str) -> Result<()> {
        use ticketing_coordinator::store::{Fare, Mode, ScanRecord, Usage};
        use ticketing_crypto::presentation::epoch_at;
        use ticketing_crypto::ticket::Serial;
        use ticketing_protocol::Id16;

        let filling = bar(n as u64, label);
        let mut left = n;
        while left > 0 {
            let batch = left.min(2000);
            let received = ticketing_service::now();
            let scans: Vec<ScanRecord> = (0..batch)
                .map(|_| ScanRecord {
                    scan_id: Id16::random(&mut rand::rng()),
                    keyset_id: self.single.id,
                    serial: Serial(rand::random()),
                    epoch: epoch_at(self.at, self.rotation),
                    at: self.at,
                    received,
                    device: self.device,
                    usage: Usage::Single {
                        transfer_seconds: self.transfer,
                        window_end: self.single.params.valid_until,
                    },
                    fare: Fare::default(),
                })
                .collect();
            self.store.record(Mode::Online, &scans).await?;
            left -= batch;
            filling.inc(batch as u64);
        }
        filling.finish_and_clear();
        Ok(())
    }
}

/// The coordinator's Bloom endpoints as a ledger run calls them: admin rebuilds and the
/// filter a validator fetches.
struct BloomHttp<'a> {
    url: &'a str,
    http: reqwest::Client,
    admin: &'a str,
}

impl BloomHttp<'_> {
    /// `POST /v1/admin/bloom/rebuild?full=…`: how long the rebuild and publication took.
    async fn publish(&self, full: bool) -> Result<Duration> {
        let url = self.url;
        let t = Instant::now();
        let answer = self
            .http
            .post(format!("{url}/v1/admin/bloom/rebuild?full={full}"))
            .bearer_auth(self.admin)
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "rebuild: {}", answer.status());
        Ok(t.elapsed())
    }

    /// `GET /v1/bloom` with `query` in binary form, gzipped or not: the body as sent.
    async fn fetch(
        &self,
        query: &str,
        gzip: bool,
    ) -> Result<impl std::ops::Deref<Target = [u8]> + use<>> {
        let url = self.url;
        let mut target = format!("{url}/v1/bloom");
        target.push_str(query);
        let answer = self
            .http
            .get(target)
            .header("accept", "application/octet-stream")
            .header("accept-encoding", if gzip { "gzip" } else { "identity" })
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "bloom: {}", answer.status());
        Ok(answer.bytes().await?)
    }
}

/// Node 1 run as a process of its own, as a deployment runs it, so that its CPU time can be
/// read apart from the load the benchmark's own wallets put on the same machine.
struct NodeProcess {
    child: std::process::Child,
}

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`: 100 on every Linux architecture).
const USER_HZ: f64 = 100.0;

impl NodeProcess {
    /// `ticketing node --index 1` on the cluster in `dir` (its manifest address and database),
    /// once it answers `/health`.
    async fn start(dir: &Path, url: &str, max_points: u32) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the ticketing binary")?;
        let child = std::process::Command::new(exe)
            .args(["node", "--index", "1"])
            .current_dir(dir)
            .env("TICKETING_DATA_DIR", dir)
            .env("TICKETING_HTTP__REQUESTS_PER_MINUTE", "0")
            .env(
                "TICKETING_NODE__MAX_TICKETS_PER_REQUEST",
                max_points.to_string(),
            )
            .env(
                "TICKETING_PAYMENTS__MAX_TICKETS_PER_CHECKOUT",
                max_points.to_string(),
            )
            .env("TICKETING_LOG__FILTER", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting `ticketing node --index 1`")?;
        let mut process = Self { child };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.child.try_wait()? {
                bail!("the node process exited before answering: {status}");
            }
            let answer = http.get(format!("{url}/health")).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return Ok(process);
            }
            if Instant::now() > deadline {
                bail!("the node process did not answer {url}/health within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU time (user + system, every thread) the process has used so far, in seconds; `None`
    /// where `/proc` cannot tell.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The command name is in parentheses and may hold spaces: count fields after it. The
        // first is the state (field 3 of the line); utime and stime are fields 14 and 15.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        Some((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decode + sign + encode on `threads` threads at once for about a second: points per second.
fn raw_all_cores(
    share: &ticketing_crypto::keyset::SecretKeyShare,
    point: &[u8; 48],
    threads: usize,
) -> Result<f64> {
    let rounds = 4000 / threads.max(1);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    for _ in 0..rounds {
                        let b = BlindedPoint::from_bytes(std::hint::black_box(point))?;
                        std::hint::black_box(issuance::partial_sign(share, &b).to_bytes());
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?
        })
    })?;
    Ok((rounds * threads) as f64 / start.elapsed().as_secs_f64())
}

/// Tickets per second one node answers with `wallets` requests of one ticket in flight at a
/// time, over `requests` paid receipts, and how many it answered. The bodies are encoded before the clock starts and
/// the answers are not checked, so the client takes as little of the machine as it can.
async fn node_throughput(
    client: &Client,
    node_url: &str,
    wallets: usize,
    requests: usize,
) -> Result<(f64, usize)> {
    let paying = bar(
        requests as u64,
        &format!("paying for {requests} 1-ticket requests"),
    );
    let mut bodies = Vec::with_capacity(requests);
    for _ in 0..requests {
        paying.inc(1);
        let holders = vec![HolderSecret::generate(&mut rand::rng()).public_key()];
        let prepared =
            client.prepare("day", &holders, ticketing_service::now(), &mut rand::rng())?;
        let pending = client.checkout(&prepared, card()).await?;
        let request = ticketing_protocol::issue::IssueRequest {
            receipt: pending.receipt,
            blinded: pending.blinded,
        };
        bodies.push(serde_json::to_vec(&request)?);
    }
    paying.finish_and_clear();
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let http = reqwest::Client::new();
    let url = format!("{node_url}/v1/issue");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..wallets.max(1) {
        let (bodies, http, url) = (bodies.clone(), http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let body = bodies
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .pop();
                let Some(body) = body else { break };
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "node answered {}",
                    answer.status()
                );
                answer.bytes().await?;
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok((done as f64 / start.elapsed().as_secs_f64(), done))
}

/// `sum` and `count` of the node's server-side `/v1/issue` latency histogram.
async fn server_time(http: &reqwest::Client, node_url: &str) -> Result<(f64, f64)> {
    let text = http
        .get(format!("{node_url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in text.lines() {
        let value = |l: &str| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with(
            "ticketing_node_http_request_duration_seconds_sum{route=\"/v1/issue\",status=\"200\"}",
        ) {
            sum = value(line);
        }
        if line.starts_with("ticketing_node_http_request_duration_seconds_count{route=\"/v1/issue\",status=\"200\"}") {
            count = value(line);
        }
    }
    Ok((sum, count))
}

async fn issue(settings: &Settings, args: &IssueArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let mut settings = settings.clone();
    settings.node.max_tickets_per_request =
        u32::try_from(args.batches.iter().copied().max().unwrap_or(50).max(1)).unwrap_or(1000);
    settings.payments.max_tickets_per_checkout = settings.node.max_tickets_per_request;
    init_quiet_tracing(&settings);
    outln!(
        "starting a 3-of-5 cluster (SQLite) in {} ...",
        dir.path().display()
    );
    let mut cluster =
        LocalCluster::start(dir.path(), 5, 3, settings.clone(), Databases::default()).await?;
    let manifest = cluster.cluster.manifest.clone();
    // Node 1, the one measured, runs as its own process on its manifest address.
    let node1 = manifest.nodes.first().context("no node")?;
    cluster.stop_node(1).await?;
    let process = NodeProcess::start(
        dir.path(),
        &node1.url,
        settings.node.max_tickets_per_request,
    )
    .await?;
    let client = Arc::new(Client::new(manifest.clone(), Duration::from_secs(30))?);
    let http = reqwest::Client::new();
    let node = MeasuredNode {
        url: &node1.url,
        process: &process,
        http: &http,
    };

    // 1. Raw partial signing, as a node does it per point: decode (subgroup check), sign, encode.
    let share = cluster
        .cluster
        .nodes
        .first()
        .context("no node")?
        .verified_shares(&manifest)?
        .into_iter()
        .next()
        .context("no keyset")?;
    let keyset_id = share.0;
    let holder = HolderSecret::generate(&mut rand::rng()).public_key();
    let point = issuance::blind(&keyset_id, &holder, &mut rand::rng())
        .0
        .to_bytes();
    let raw = raw_partial_sign(&share.1, &point)?;

    // 2. Node-side cost per ticket at several batch sizes.
    overhead_table(&client, &node, args, raw).await?;

    // 3. One node's throughput with concurrent 1-ticket requests.
    throughput_table(&client, &node, args, &share.1, &point).await?;

    // 4. End to end: concurrent buyers, one ticket per purchase, all five nodes asked.
    end_to_end(&client, args).await?;
    drop(process);
    cluster.stop().await
}

/// Node 1 as `bench issue` measures it: its URL, its process (CPU time) and the HTTP client
/// that reads its metrics.
struct MeasuredNode<'a> {
    url: &'a str,
    process: &'a NodeProcess,
    http: &'a reqwest::Client,
}

/// Time decode + sign + encode of `point` on this thread and print it: the time per point.
fn raw_partial_sign(share: &SecretKeyShare, point: &[u8; 48]) -> Result<Duration> {
    let rounds = 2000;
    let start = Instant::now();
    for _ in 0..rounds {
        let b = BlindedPoint::from_bytes(std::hint::black_box(point))?;
        std::hint::black_box(issuance::partial_sign(share, &b).to_bytes());
    }
    let raw = start.elapsed() / rounds;
    outln!(
        "\nraw partial sign (decode + sign + encode): {:.1} µs/point",
        raw.as_secs_f64() * 1e6
    );
    Ok(raw)
}

/// The overhead table: node-side cost per ticket at each batch size, server-side time from
/// the node's own latency histogram (HTTP handler: JSON + point checks + DB + log + signing),
/// next to `raw`, the time to sign one point.
async fn overhead_table(
    client: &Client,
    node: &MeasuredNode<'_>,
    args: &IssueArgs,
    raw: Duration,
) -> Result<()> {
    outln!(
        "\n{:>6} {:>14} {:>16} {:>10} {:>13} {:>10}",
        "batch",
        "node µs/ticket",
        "client µs/ticket",
        "overhead",
        "node CPU µs",
        "CPU over"
    );
    for &k in &args.batches {
        overhead_row(client, node, k, args.requests, raw).await?;
    }
    Ok(())
}

/// One row of the overhead table: pay for `requests` requests of `k` tickets, then issue them
/// at the measured node one after the other.
async fn overhead_row(
    client: &Client,
    node: &MeasuredNode<'_>,
    k: usize,
    requests: usize,
    raw: Duration,
) -> Result<()> {
    let mut pendings = Vec::new();
    let paying = bar(requests as u64, &format!("paying for batches of {k}"));
    for _ in 0..requests {
        paying.inc(1);
        let holders: Vec<_> = (0..k)
            .map(|_| HolderSecret::generate(&mut rand::rng()).public_key())
            .collect();
        let prepared =
            client.prepare("day", &holders, ticketing_service::now(), &mut rand::rng())?;
        pendings.push(client.checkout(&prepared, card()).await?);
    }
    paying.finish_and_clear();
    let (sum0, n0) = server_time(node.http, node.url).await?;
    let cpu0 = node.process.cpu_seconds();
    let start = Instant::now();
    for p in &pendings {
        client.issue_at(ShareIndex::new(1)?, p).await?;
    }
    let client_side = start.elapsed();
    let cpu1 = node.process.cpu_seconds();
    let (sum1, n1) = server_time(node.http, node.url).await?;
    let tickets = (requests * k) as f64;
    let raw_us = raw.as_secs_f64() * 1e6;
    let node_us = (sum1 - sum0) / tickets * 1e6;
    let client_us = client_side.as_secs_f64() / tickets * 1e6;
    let overhead = node_us / raw_us - 1.0;
    debug_assert!((n1 - n0 - requests as f64).abs() < 0.5);
    let cpu_us = cpu0.zip(cpu1).map(|(a, b)| (b - a) / tickets * 1e6);
    outln!(
        "{k:>6} {node_us:>14.1} {client_us:>16.1} {:>9.0}% {:>13} {:>10}",
        overhead * 100.0,
        cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
        cpu_us.map_or("-".into(), |c| format!(
            "{:.0}%",
            (c / raw_us - 1.0) * 100.0
        ))
    );
    Ok(())
}

/// The throughput table: one node's rate with concurrent 1-ticket requests, next to the rate
/// at which this machine signs on all its cores: how much the HTTP, receipt, log and response
/// work around signing costs when purchases arrive together (they share log commits).
async fn throughput_table(
    client: &Client,
    node: &MeasuredNode<'_>,
    args: &IssueArgs,
    share: &SecretKeyShare,
    point: &[u8; 48],
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let all_core = raw_all_cores(share, point, cores)?;
    outln!(
        "\nraw partial sign on {cores} threads: {all_core:.0} points/s\n\
         (tickets/s: on this machine, shared with the wallets' load; node CPU: what the node \
         process used per ticket;\n capacity: {cores} cores / node CPU per ticket, the rate of \
         a node whose load comes from elsewhere)\n{:>8} {:>10} {:>8} {:>12} {:>10} {:>8}",
        "wallets",
        "tickets/s",
        "of raw",
        "node CPU µs",
        "capacity",
        "of raw"
    );
    for &wallets in &args.wallets {
        let cpu0 = node.process.cpu_seconds();
        let (rate, tickets) =
            node_throughput(client, node.url, wallets, args.throughput_requests).await?;
        let cpu1 = node.process.cpu_seconds();
        let cpu_us = cpu0.zip(cpu1).map(|(a, b)| (b - a) / tickets as f64 * 1e6);
        let capacity = cpu_us.map(|c| cores as f64 * 1e6 / c);
        outln!(
            "{wallets:>8} {rate:>10.0} {:>7.0}% {:>12} {:>10} {:>8}",
            rate / all_core * 100.0,
            cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
            capacity.map_or("-".into(), |c| format!("{c:.0}")),
            capacity.map_or("-".into(), |c| format!("{:.0}%", c / all_core * 100.0))
        );
    }
    Ok(())
}

/// End to end: `args.concurrency` buyers, one ticket per purchase, all five nodes asked; the
/// rate and latency percentiles.
async fn end_to_end(client: &Arc<Client>, args: &IssueArgs) -> Result<()> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per_worker = args.tickets.div_ceil(args.concurrency.max(1));
    let buying = bar(
        (per_worker * args.concurrency.max(1)) as u64,
        "buying 1-ticket purchases",
    );
    for _ in 0..args.concurrency.max(1) {
        let client = client.clone();
        let buying = buying.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let holders = vec![HolderSecret::generate(&mut rand::rng()).public_key()];
                let t0 = Instant::now();
                let prepared = client.prepare(
                    "single",
                    &holders,
                    ticketing_service::now(),
                    &mut rand::rng(),
                )?;
                let pending = client.checkout(&prepared, card()).await?;
                client.complete(&pending).await?;
                latencies.push(t0.elapsed());
                buying.inc(1);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    buying.finish_and_clear();
    latencies.sort();
    outln!(
        "\nend to end ({} purchases of 1 ticket, {} concurrent, pay + 5 nodes + combine + verify):",
        latencies.len(),
        args.concurrency
    );
    outln!(
        "  {:.1} tickets/s, p50 {:.1} ms, p99 {:.1} ms",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 500).as_secs_f64() * 1e3,
        percentile(&latencies, 990).as_secs_f64() * 1e3
    );
    Ok(())
}
