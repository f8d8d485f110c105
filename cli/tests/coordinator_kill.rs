//! Durability of the spent ledger: the real `ticketing coordinator` process is SIGKILLed in the
//! middle of a concurrent redeem load and restarted on the same data directory; every scan that
//! was answered `accepted` before the kill is in the ledger afterwards, a retry of it gets the
//! same answer, and the ticket cannot be used again under a new scan id.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ticketing_config::Settings;
use ticketing_config::cluster::Cluster;
use ticketing_coordinator::TokenRole;
use ticketing_coordinator::store::{Ledger, SqlStore};
use ticketing_crypto::issuance;
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_protocol::redeem::{RedeemBatch, RedeemBatchResponse, RedeemResponse, Scan, Verdict};
use ticketing_protocol::verify::epoch_fresh;
use ticketing_protocol::{ErrorCode, Id16};
use tokio::sync::Notify;

/// Distinct single tickets in the load (each redeemed once).
const TICKETS: usize = 800;
/// Concurrent clients: even ones send `POST /v1/redeem`, odd ones batches of [`BATCH`].
const WORKERS: usize = 12;
/// Scans per batch request.
const BATCH: usize = 4;
/// The coordinator is killed once this many scans have been answered `accepted`: well below
/// [`TICKETS`], so the load is still running.
const KILL_AFTER: usize = 250;
/// Generous deadlines for a slow machine running a debug build.
const STARTUP: Duration = Duration::from_secs(60);
const LOAD: Duration = Duration::from_secs(120);

fn ticketing(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(args)
        .env("TICKETING_DATA_DIR", data_dir)
        .env_remove("TICKETING_CONFIG")
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running `ticketing coordinator` process; killed (SIGKILL) when dropped.
struct CoordinatorProcess {
    child: Child,
    log: PathBuf,
}

impl CoordinatorProcess {
    fn spawn(data_dir: &Path, port: u16, log: PathBuf) -> Self {
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg("coordinator")
            .env("TICKETING_DATA_DIR", data_dir)
            .env("TICKETING_COORDINATOR__LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("TICKETING_CONFIG")
            .env_remove("TICKETING_COORDINATOR__DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for `/health`; `Err` with the log when the process exited first.
    async fn healthy(&mut self, http: &reqwest::Client, url: &str) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("coordinator exited ({status}):\n{}", self.log()));
            }
            if let Ok(r) = http.get(format!("{url}/health")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "coordinator not healthy after {STARTUP:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL (on Unix `Child::kill` sends SIGKILL): no shutdown code runs.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mint `count` tickets of the current `single` keyset locally: blind, one partial signature
/// per node from the first t nodes' shares, combine, unblind (what nodes and wallet do).
fn mint(cluster: &Cluster, now: u64, count: usize) -> Vec<(Ticket, HolderSecret)> {
    let manifest = &cluster.manifest;
    let keyset = manifest
        .keysets
        .iter()
        .filter(|k| k.params.product == "single" && k.is_valid_at(now))
        .max_by_key(|k| k.params.valid_until)
        .expect("a single keyset valid now");
    assert!(
        keyset.params.valid_until > now + 600,
        "the single keyset's window ends within 10 minutes; run the test again later"
    );
    let t = usize::from(manifest.threshold);
    let shares: Vec<_> = cluster
        .nodes
        .iter()
        .take(t)
        .map(|node| {
            node.verified_shares(manifest)
                .unwrap()
                .into_iter()
                .find(|(id, _)| *id == keyset.id)
                .unwrap()
                .1
        })
        .collect();
    assert_eq!(shares.len(), t);
    let tickets = par_map(&vec![(); count], |()| {
        let mut rng = rand::rng();
        let secret = HolderSecret::generate(&mut rng);
        let holder = secret.public_key();
        let (point, r) = issuance::blind(&keyset.id, &holder, &mut rng);
        let partials: Vec<_> = shares
            .iter()
            .map(|s| issuance::partial_sign(s, &point))
            .collect();
        let blind = issuance::combine(t, &partials).unwrap();
        let ticket = Ticket {
            keyset_id: keyset.id,
            holder,
            signature: issuance::unblind(&blind, &r),
        };
        (ticket, secret)
    });
    assert_eq!(tickets.len(), count);
    // Spot-check the minting itself, so a failure later is the coordinator's.
    for (ticket, _) in tickets.iter().step_by(count / 10) {
        ticket.verify(&keyset.public_key).unwrap();
    }
    tickets
}

/// `f` over `items` on every core (Ed25519 in a debug build costs milliseconds per key).
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(threads).max(1))
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Shared bookkeeping of the load.
#[derive(Default)]
struct Load {
    /// Base45 payloads, one per ticket.
    payloads: Vec<String>,
    /// Next ticket to send.
    next: AtomicUsize,
    /// Scans sent and not answered yet.
    in_flight: AtomicUsize,
    /// Set just before the kill: from then on connection errors are expected.
    killed: AtomicBool,
    accepted_count: AtomicUsize,
    /// (scan id, ticket index, verdict) of every scan answered `accepted`.
    accepted: Mutex<Vec<(Id16, usize, Verdict)>>,
    /// Answers other than `accepted` (none expected: every ticket is fresh).
    rejected: Mutex<Vec<(Id16, Verdict)>>,
    /// Scans whose request failed after the kill: outcome unknown.
    unknown: Mutex<Vec<Id16>>,
    /// Requests that failed after the kill; answers that arrived after the kill.
    failed_requests: AtomicUsize,
    answered_after_kill: AtomicUsize,
    /// What went wrong before the kill (the test fails with it).
    error: Mutex<Option<String>>,
    /// Notified when [`KILL_AFTER`] is crossed or on an error.
    wake: Notify,
}

impl Load {
    fn fail(&self, error: String) {
        self.error.lock().unwrap().get_or_insert(error);
        self.wake.notify_one();
    }

    fn record(&self, first: usize, answers: Vec<RedeemResponse>, scan_ids: &[Id16]) {
        let ids: Vec<Id16> = answers.iter().map(|a| a.scan_id).collect();
        if ids != scan_ids {
            return self.fail(format!("answers for {ids:?}, sent {scan_ids:?}"));
        }
        let mut newly = 0;
        for (i, a) in answers.into_iter().enumerate() {
            match a.verdict {
                Verdict::Accepted { .. } => {
                    self.accepted
                        .lock()
                        .unwrap()
                        .push((a.scan_id, first + i, a.verdict));
                    newly += 1;
                }
                Verdict::Rejected { .. } => {
                    self.rejected.lock().unwrap().push((a.scan_id, a.verdict));
                }
            }
        }
        let before = self.accepted_count.fetch_add(newly, Ordering::SeqCst);
        if before < KILL_AFTER && before + newly >= KILL_AFTER {
            self.wake.notify_one();
        }
    }
}

/// One client: takes the next 1 (even workers) or [`BATCH`] (odd) tickets, each under a fresh
/// scan id, until the tickets run out or the coordinator is gone.
async fn worker(w: usize, load: Arc<Load>, http: reqwest::Client, url: String, token: String) {
    let per = if w.is_multiple_of(2) { 1 } else { BATCH };
    loop {
        let first = load.next.fetch_add(per, Ordering::SeqCst);
        if first >= load.payloads.len() {
            return;
        }
        let last = (first + per).min(load.payloads.len());
        let scans: Vec<Scan> = (first..last)
            .map(|i| Scan {
                scan_id: Id16::random(&mut rand::rng()),
                payload: load.payloads[i].clone(),
                scanned_at: ticketing_service::now(),
            })
            .collect();
        let scan_ids: Vec<Id16> = scans.iter().map(|s| s.scan_id).collect();
        load.in_flight.fetch_add(scans.len(), Ordering::SeqCst);
        let sent = if per == 1 {
            http.post(format!("{url}/v1/redeem")).json(&scans[0])
        } else {
            http.post(format!("{url}/v1/redeem/batch"))
                .json(&RedeemBatch { scans })
        }
        .bearer_auth(&token)
        .send()
        .await;
        let answers = match sent {
            Ok(r) if r.status().is_success() => if per == 1 {
                r.json::<RedeemResponse>().await.map(|a| vec![a])
            } else {
                r.json::<RedeemBatchResponse>().await.map(|b| b.results)
            }
            .map_err(|e| e.to_string()),
            Ok(r) => Err(format!(
                "HTTP {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        };
        load.in_flight.fetch_sub(scan_ids.len(), Ordering::SeqCst);
        match answers {
            Ok(answers) => {
                if load.killed.load(Ordering::SeqCst) {
                    load.answered_after_kill.fetch_add(1, Ordering::SeqCst);
                }
                load.record(first, answers, &scan_ids);
            }
            // The coordinator is gone: this request's outcome is unknown; stop.
            Err(_) if load.killed.load(Ordering::SeqCst) => {
                load.failed_requests.fetch_add(1, Ordering::SeqCst);
                load.unknown.lock().unwrap().extend(scan_ids);
                return;
            }
            Err(e) => return load.fail(format!("request failed before the kill: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_redemption_survives_a_sigkill_of_the_coordinator() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    // A 2-of-3 cluster with the coordinator on our port.
    let o = ticketing(
        tmp.path(),
        &[
            "setup",
            "--nodes",
            "3",
            "--threshold",
            "2",
            "--horizon-days",
            "2",
            "--coordinator-url",
            &url,
            "--out",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let settings = Settings {
        data_dir: data.clone(),
        ..Settings::default()
    };
    let (token, _device) =
        ticketing_coordinator::register(&settings, "load", TokenRole::Validator, false)
            .await
            .unwrap();
    let token = token.expose().to_owned();

    // Tickets first (no nodes needed), then presentations, all before the load starts.
    let cluster = Cluster::read(&data).unwrap();
    let rotation = cluster.manifest.rotation_seconds;
    let minting = Instant::now();
    let tickets = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || mint(&cluster, ticketing_service::now(), TICKETS)
    })
    .await
    .unwrap();
    // One epoch ahead (within the allowed skew): the same payloads stay fresh for at least
    // 2 rotations, long enough to retry them after the restart.
    let epoch = epoch_at(ticketing_service::now(), rotation) + 1;
    let payloads = tokio::task::spawn_blocking(move || {
        par_map(&tickets, |(ticket, secret)| {
            Presentation::sign(ticket, secret, epoch).to_text()
        })
    })
    .await
    .unwrap();
    eprintln!(
        "minted and presented {TICKETS} tickets in {:.1?}",
        minting.elapsed()
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut coordinator = CoordinatorProcess::spawn(&data, port, tmp.path().join("first.log"));
    coordinator.healthy(&http, &url).await.unwrap();

    // The load, and the kill once KILL_AFTER scans are answered `accepted`.
    let load = Arc::new(Load {
        payloads,
        ..Load::default()
    });
    let load_started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(worker(
                w,
                load.clone(),
                http.clone(),
                url.clone(),
                token.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(LOAD, load.wake.notified())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "fewer than {KILL_AFTER} accepted after {LOAD:?}:\n{}",
                coordinator.log()
            )
        });
    if let Some(e) = load.error.lock().unwrap().clone() {
        panic!("{e}\ncoordinator log:\n{}", coordinator.log());
    }
    // A random extra 0-249 ms (about one check + commit round of this load in a debug build):
    // across runs the kill lands at different points of the check/commit/answer pipeline. The
    // load keeps going meanwhile.
    tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 250))).await;
    load.killed.store(true, Ordering::SeqCst);
    let in_flight_at_kill = load.in_flight.load(Ordering::SeqCst);
    let sent_at_kill = load.next.load(Ordering::SeqCst).min(TICKETS);
    let accepted_at_kill = load.accepted_count.load(Ordering::SeqCst);
    coordinator.kill();
    let load_time = load_started.elapsed();
    for w in workers {
        tokio::time::timeout(LOAD, w).await.unwrap().unwrap();
    }
    if let Some(e) = load.error.lock().unwrap().clone() {
        panic!("{e}");
    }
    assert!(
        sent_at_kill < TICKETS,
        "the load had finished before the kill: nothing was tested"
    );
    let accepted = std::mem::take(&mut *load.accepted.lock().unwrap());
    let unknown = std::mem::take(&mut *load.unknown.lock().unwrap());
    let rejected = load.rejected.lock().unwrap().clone();
    assert!(rejected.is_empty(), "fresh tickets rejected: {rejected:?}");
    eprintln!(
        "killed after {load_time:.1?}: {accepted_at_kill} accepted when the kill was sent, {} in \
         all ({} answered after it), {sent_at_kill}/{TICKETS} tickets sent, {in_flight_at_kill} \
         scans in flight, {} requests failed ({} scans of unknown outcome)",
        accepted.len(),
        load.answered_after_kill.load(Ordering::SeqCst),
        load.failed_requests.load(Ordering::SeqCst),
        unknown.len(),
    );
    assert!(accepted.len() >= KILL_AFTER);

    // Restart on the same directory and port (retried: the port may linger briefly).
    let restart = Instant::now();
    let mut attempt = 0;
    let mut coordinator = loop {
        attempt += 1;
        let mut c = CoordinatorProcess::spawn(
            &data,
            port,
            tmp.path().join(format!("restart-{attempt}.log")),
        );
        match c.healthy(&http, &url).await {
            Ok(()) => break c,
            Err(e) if attempt < 10 => {
                eprintln!("restart attempt {attempt} failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    eprintln!("restarted in {:.1?}", restart.elapsed());

    // The ledger, read directly (WAL: a reader next to the running coordinator).
    let store = SqlStore::open(&settings.coordinator_database_url())
        .await
        .unwrap();
    for (scan_id, _, _) in &accepted {
        assert_eq!(
            store.scan_accepted(scan_id).await.unwrap(),
            Some(true),
            "scan {scan_id} was answered accepted but is not in the ledger"
        );
    }
    let (mut committed, mut lost) = (0, 0);
    for scan_id in &unknown {
        match store.scan_accepted(scan_id).await.unwrap() {
            Some(true) => committed += 1,
            None => lost += 1,
            Some(false) => panic!("unknown-outcome scan {scan_id} recorded as rejected"),
        }
    }
    eprintln!(
        "ledger: all {} accepted scans present; of {} unknown-outcome scans {committed} were \
         committed, {lost} not",
        accepted.len(),
        unknown.len()
    );

    // Retries with the same scan ids get the same answers; a new scan id is a reuse.
    let skew = cluster.manifest.clock_skew_seconds;
    if !epoch_fresh(epoch, ticketing_service::now() + 5, rotation, skew) {
        eprintln!("WARNING: presentations went stale before the retries; retry checks skipped");
    } else {
        let scans: Vec<Scan> = accepted
            .iter()
            .map(|(scan_id, i, _)| Scan {
                scan_id: *scan_id,
                payload: load.payloads[*i].clone(),
                scanned_at: ticketing_service::now(),
            })
            .collect();
        for (chunk, expected) in scans.chunks(1000).zip(accepted.chunks(1000)) {
            let r = http
                .post(format!("{url}/v1/redeem/batch"))
                .bearer_auth(&token)
                .json(&RedeemBatch {
                    scans: chunk.to_vec(),
                })
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let results = r.json::<RedeemBatchResponse>().await.unwrap().results;
            assert_eq!(results.len(), chunk.len());
            for (got, (scan_id, _, verdict)) in results.iter().zip(expected) {
                assert_eq!(got.scan_id, *scan_id);
                assert_eq!(
                    &got.verdict, verdict,
                    "retry of {scan_id} answered differently"
                );
            }
        }
        let (_, i, _) = accepted[0];
        let reuse = Scan {
            scan_id: Id16::random(&mut rand::rng()),
            payload: load.payloads[i].clone(),
            scanned_at: ticketing_service::now(),
        };
        let r = http
            .post(format!("{url}/v1/redeem"))
            .bearer_auth(&token)
            .json(&reuse)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let answer = r.json::<RedeemResponse>().await.unwrap();
        assert!(
            matches!(
                answer.verdict,
                Verdict::Rejected {
                    code: ErrorCode::ReplayedEpoch | ErrorCode::Spent
                }
            ),
            "a new scan of an accepted ticket: {:?}",
            answer.verdict
        );
        eprintln!(
            "retried {} accepted scans: same answers; a new scan id: {:?}",
            accepted.len(),
            answer.verdict
        );
    }
    coordinator.kill();
    eprintln!("total {:.1?}", started.elapsed());
}
