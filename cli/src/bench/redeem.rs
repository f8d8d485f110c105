//! `ticketing bench redeem`: redemptions per second at a real coordinator on loopback (HTTP,
//! device token, the ledger on SQLite or Postgres), next to the machine's raw ticket-verify
//! rate measured in the same run.
//!
//! Tickets are minted locally from the cluster's own shares (t partial signatures, combined),
//! which is what the nodes would return; the bench measures redemption, not issuance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use ticketing_config::Settings;
use ticketing_crypto::issuance;
use ticketing_crypto::keyset::{PublicKey, SecretKeyShare};
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_protocol::Id16;
use ticketing_protocol::redeem::{RedeemBatchResponse, Verdict};

use super::{RedeemArgs, percentile};
use ticketing_local::{Databases, LocalCluster};

/// A minted ticket with its holder secret.
type Minted = (Ticket, HolderSecret);

/// `ticketing bench redeem`.
pub(super) async fn run(settings: &Settings, args: &RedeemArgs) -> Result<()> {
    super::init_quiet_tracing(settings);
    let mut settings = settings.clone();
    settings.coordinator.max_scans_per_request =
        u32::try_from(args.batch.max(1)).unwrap_or(u32::MAX);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    outln!(
        "{} tickets per run, batches of {}, {} concurrent requests, {cores} cores",
        args.tickets,
        args.batch,
        args.concurrency
    );

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
        let result = one_run(&cluster, args, cores).await;
        cluster.stop().await?;
        let (raw_one, raw_all, batch, single) = result?;
        outln!("\n{name}:");
        outln!(
            "  raw ticket verify (decode + holder sig + BLS, no I/O): {raw_one:.0}/s on 1 core, {raw_all:.0}/s on {cores}"
        );
        for (label, r) in [("batch", &batch), ("single", &single)] {
            outln!(
                "  {label:<6} {:>8.0} redemptions/s  p50 {:>6.1} ms  p99 {:>6.1} ms  ({} per request) = {:.0}% of the {cores}-core raw rate",
                r.rate,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.per_request,
                r.rate / raw_all * 100.0
            );
        }
    }
    Ok(())
}

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    per_request: usize,
}

async fn one_run(
    cluster: &LocalCluster,
    args: &RedeemArgs,
    cores: usize,
) -> Result<(f64, f64, Figures, Figures)> {
    let manifest = cluster.cluster.manifest.clone();
    let now = ticketing_service::now();
    let keyset = manifest
        .keysets
        .iter()
        .find(|k| k.params.product == "single" && k.is_valid_at(now))
        .context("no single keyset valid now")?;
    let threshold = usize::from(manifest.threshold);
    let mut shares = Vec::new();
    for node in cluster.cluster.nodes.iter().take(threshold) {
        let share = node
            .verified_shares(&manifest)?
            .into_iter()
            .find(|(id, _)| *id == keyset.id)
            .context("a node lacks the keyset")?;
        shares.push(share.1);
    }
    let shares = Arc::new(shares);
    let keyset_id = keyset.id;
    // Two sets: one for the batch run, one for the single-scan run.
    let total = args.tickets.max(1) * 2;
    out!("minting {total} tickets ... ");
    let minted = mint(&shares, keyset_id, threshold, total, cores).await?;
    outln!("done");
    let (batch_set, single_set) = minted.split_at(args.tickets.max(1));

    // Raw verify rate: the same checks the coordinator makes, without HTTP or the ledger.
    let rotation = manifest.rotation_seconds;
    let texts: Vec<String> = batch_set
        .iter()
        .take(400)
        .map(|(t, s)| Presentation::sign(t, s, epoch_at(now, rotation)).to_text())
        .collect();
    let pk = keyset.public_key.clone();
    let raw_one = raw_rate(&texts, &pk, now, rotation, 1).await?;
    let raw_all = raw_rate(&texts, &pk, now, rotation, cores).await?;

    let (token, _) = ticketing_coordinator::register(
        &cluster.settings,
        "bench",
        ticketing_coordinator::TokenRole::Validator,
        true,
    )
    .await?;
    let url = cluster
        .coordinator
        .as_ref()
        .context("coordinator not running")?
        .url
        .clone();
    let http = reqwest::Client::new();
    let batch = load(
        &http,
        &url,
        token.expose(),
        batch_set,
        args.batch,
        args.concurrency,
        rotation,
    )
    .await?;
    let single = load(
        &http,
        &url,
        token.expose(),
        single_set,
        1,
        args.concurrency * 8,
        rotation,
    )
    .await?;
    Ok((raw_one, raw_all, batch, single))
}

async fn mint(
    shares: &Arc<Vec<SecretKeyShare>>,
    keyset_id: ticketing_crypto::keyset::KeysetId,
    threshold: usize,
    total: usize,
    cores: usize,
) -> Result<Vec<Minted>> {
    let per = total.div_ceil(cores.max(1));
    let mut tasks = Vec::new();
    for part in 0..cores.max(1) {
        let shares = shares.clone();
        let n = per.min(total.saturating_sub(part * per));
        tasks.push(tokio::task::spawn_blocking(
            move || -> Result<Vec<Minted>> {
                let mut rng = rand::rng();
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let secret = HolderSecret::generate(&mut rng);
                    let holder = secret.public_key();
                    let (blinded, r) = issuance::blind(&keyset_id, &holder, &mut rng);
                    let partials: Vec<_> = shares
                        .iter()
                        .map(|s| issuance::partial_sign(s, &blinded))
                        .collect();
                    let signature =
                        issuance::unblind(&issuance::combine(threshold, &partials)?, &r);
                    out.push((
                        Ticket {
                            keyset_id,
                            holder,
                            signature,
                        },
                        secret,
                    ));
                }
                Ok(out)
            },
        ));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Presentations verified per second on `threads` threads (parse + every check).
async fn raw_rate(
    texts: &[String],
    pk: &PublicKey,
    now: u64,
    rotation: u64,
    threads: usize,
) -> Result<f64> {
    let texts = Arc::new(texts.to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..threads.max(1) {
        let (texts, pk) = (texts.clone(), pk.clone());
        tasks.push(tokio::task::spawn_blocking(move || -> Result<usize> {
            for text in texts.iter() {
                let p = Presentation::from_text(text)?;
                p.verify(&pk, epoch_at(now, rotation), 1)?;
                std::hint::black_box(p.ticket.serial());
            }
            Ok(texts.len())
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Redeem every ticket once, `per_request` scans per request, `concurrency` requests at a
/// time; every answer must be `accepted` (distinct, fresh tickets).
async fn load(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    tickets: &[Minted],
    per_request: usize,
    concurrency: usize,
    rotation: u64,
) -> Result<Figures> {
    let epoch = epoch_at(ticketing_service::now(), rotation);
    let scans: Vec<serde_json::Value> = tickets
        .iter()
        .map(|(t, s)| {
            json!({
                "scan_id": Id16::random(&mut rand::rng()),
                "payload": Presentation::sign(t, s, epoch).to_text(),
                "scanned_at": ticketing_service::now(),
            })
        })
        .collect();
    let chunks: Vec<Vec<serde_json::Value>> = scans
        .chunks(per_request.max(1))
        .map(<[_]>::to_vec)
        .collect();
    let progress = super::bar(chunks.len() as u64, "redeeming");
    let queue = Arc::new(std::sync::Mutex::new(chunks));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, http, progress) = (queue.clone(), http.clone(), progress.clone());
        let (url, token) = (url.to_owned(), token.to_owned());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(chunk) = next else { break };
                let t0 = Instant::now();
                let verdicts = redeem_chunk(&http, &url, &token, &chunk).await?;
                latencies.push(t0.elapsed());
                progress.inc(1);
                if let Some(v) = verdicts
                    .iter()
                    .find(|v| !matches!(v, Verdict::Accepted { .. }))
                {
                    bail!("a fresh ticket was not accepted: {v:?}");
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await??);
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    latencies.sort();
    Ok(Figures {
        rate: tickets.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 500),
        p99: percentile(&latencies, 990),
        per_request: per_request.max(1),
    })
}

/// Redeem one chunk of scans: `/v1/redeem` for a single scan, `/v1/redeem/batch` otherwise;
/// the verdicts in order.
async fn redeem_chunk(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    chunk: &[serde_json::Value],
) -> Result<Vec<Verdict>> {
    if chunk.len() == 1 {
        let resp = http
            .post(format!("{url}/v1/redeem"))
            .bearer_auth(token)
            .json(&chunk.first())
            .send()
            .await?
            .error_for_status()?;
        let one: ticketing_protocol::redeem::RedeemResponse = resp.json().await?;
        Ok(vec![one.verdict])
    } else {
        let resp = http
            .post(format!("{url}/v1/redeem/batch"))
            .bearer_auth(token)
            .json(&json!({ "scans": chunk }))
            .send()
            .await?
            .error_for_status()?;
        let all: RedeemBatchResponse = resp.json().await?;
        Ok(all.results.into_iter().map(|r| r.verdict).collect())
    }
}
