//! `ticketing demo` and the standalone service commands (`ticketing node`, `payments`,
//! `coordinator`): where each listens, the signals that stop them. The services themselves are
//! started by `ticketing-local`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster, SetupSpec};
use ticketing_config::products::ProductsFile;
use ticketing_coordinator::TokenRole;
use ticketing_local::{
    Running, bind, socket_addr, spawn_apps, spawn_coordinator, spawn_node, spawn_payments,
};
use ticketing_protocol::manifest::Manifest;
use tokio::net::TcpListener;

/// The apps' origin for a cluster whose payments service is at `payments_url`: the same host,
/// port `port`.
fn apps_origin(payments_url: &str, port: u16) -> Result<String> {
    let addr = socket_addr(payments_url)?;
    Ok(format!("http://{}:{port}", addr.ip()))
}

/// The validator state directory the CLI validator uses by default.
pub fn validator_dir(settings: &Settings) -> std::path::PathBuf {
    settings.data_dir.join("validator")
}

/// Write a token file, private to this user (directory 0700, file 0600), like the cluster's
/// secrets.
fn write_token(file: &Path, token: &str) -> Result<()> {
    if let Some(parent) = file.parent() {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(parent)?;
    }
    cluster::write_private(file, token.as_bytes())?;
    Ok(())
}

/// Where a service listens: its configured address, or, when that is the default, the port of
/// the URL the manifest gives it (loopback for a loopback URL, every interface otherwise), so
/// the nodes of a cluster set up with `--node-urls` each listen on their own port.
fn listen_for(configured: SocketAddr, default: SocketAddr, url: &str) -> SocketAddr {
    if configured != default {
        return configured;
    }
    let Some(port) = port_of(url) else {
        return configured;
    };
    let host = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or("", |(h, _)| h);
    if matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        SocketAddr::from(([0, 0, 0, 0], port))
    }
}

/// Bind where a standalone service listens ([`listen_for`]); the error names the setting.
async fn bind_listen(
    configured: SocketAddr,
    default: SocketAddr,
    url: &str,
    setting: &str,
) -> Result<TcpListener> {
    let listen = listen_for(configured, default, url);
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} ({setting})"))
}

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Ctrl-C, or SIGTERM (what `docker stop`, systemd and Kubernetes send): either stops the
/// services gracefully (no new connections, in-flight requests finished).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C still works");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        tracing::info!("stopping: finishing requests in flight");
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `ticketing demo`: set the cluster up in `data_dir` if it is not there, start payments and
/// every node on loopback, print where everything is, run until Ctrl-C.
pub async fn run(settings: &Settings) -> Result<()> {
    let dir = &settings.data_dir;
    let spec = ticketing_local::spec(
        settings,
        settings.demo.nodes,
        settings.demo.threshold,
        ProductsFile::builtin(),
        31,
    );
    let existing = cluster::manifest_path(dir).exists();
    if existing {
        check_made_for(settings, &spec)?;
    }
    // Every port is bound before anything is written: a busy port leaves no half-made cluster.
    let listeners = Listeners::bind(settings, &spec).await?;
    if !existing {
        deal(settings, &spec)?;
    }
    let cluster =
        Cluster::read(dir).with_context(|| format!("reading the cluster in {}", dir.display()))?;
    let manifest = &cluster.manifest;
    let apps_url = &listeners.apps_url;

    // The apps' origin, allowed by CORS on every service (the wallet calls payments and nodes).
    let mut settings = settings.clone();
    if settings.http.metrics_listen.take().is_some() {
        tracing::warn!(
            "http.metrics_listen is for one service per process; the demo serves /metrics on each service"
        );
    }
    if !settings.http.cors_origins.contains(apps_url) {
        settings.http.cors_origins.push(apps_url.clone());
    }
    let settings = &settings;
    let apps = spawn_apps(manifest, listeners.apps)?;
    let mut running = spawn_services(
        settings,
        manifest,
        listeners.payments,
        listeners.coordinator,
        listeners.nodes,
    )
    .await?;
    let token_file = register_demo_tokens(settings).await?;
    print_where(manifest, dir, &running, apps_url, &token_file);

    shutdown_signal().await;
    outln!("stopping ...");
    running.push(apps);
    for r in running {
        r.stop().await?;
    }
    Ok(())
}

/// Refuse to start the cluster already in `data_dir` when it was made for other ports or
/// another threshold than the settings ask for: it would silently answer on the old ones.
fn check_made_for(settings: &Settings, spec: &SetupSpec) -> Result<()> {
    let dir = &settings.data_dir;
    let manifest = cluster::read_manifest(&cluster::manifest_path(dir))?;
    let made: Vec<&str> = std::iter::once(manifest.payments.url.as_str())
        .chain([manifest.coordinator.url.as_str()])
        .chain(manifest.nodes.iter().map(|n| n.url.as_str()))
        .collect();
    let asked: Vec<&str> = std::iter::once(spec.payments_url.as_str())
        .chain([spec.coordinator_url.as_str()])
        .chain(spec.node_urls.iter().map(String::as_str))
        .collect();
    if made != asked || manifest.threshold != settings.demo.threshold {
        anyhow::bail!(
            "the cluster in {} was set up for payments at {} and {}-of-{} nodes, but the \
             settings ask for payments at {} and {}-of-{} (demo.base_port = {}); start it \
             with the settings it was made with (--base-port {} --nodes {} --threshold {}), \
             or use another --data-dir for a new cluster",
            dir.display(),
            manifest.payments.url,
            manifest.threshold,
            manifest.nodes.len(),
            spec.payments_url,
            settings.demo.threshold,
            spec.node_urls.len(),
            settings.demo.base_port,
            port_of(&manifest.payments.url).unwrap_or(settings.demo.base_port),
            manifest.nodes.len(),
            manifest.threshold,
        );
    }
    Ok(())
}

/// The demo's listeners, every one bound before the cluster is set up.
struct Listeners {
    /// The apps' origin (the payments host, port `demo.base_port + 2`).
    apps_url: String,
    apps: TcpListener,
    payments: TcpListener,
    coordinator: TcpListener,
    nodes: Vec<TcpListener>,
}

impl Listeners {
    /// Bind the apps, payments, the coordinator and every node of `spec`, in that order.
    async fn bind(settings: &Settings, spec: &SetupSpec) -> Result<Self> {
        let apps_url = apps_origin(
            &spec.payments_url,
            settings.demo.base_port.saturating_add(2),
        )?;
        let apps = bind(&apps_url).await?;
        let payments = bind(&spec.payments_url).await?;
        let coordinator = bind(&spec.coordinator_url).await?;
        let mut nodes = Vec::new();
        for url in &spec.node_urls {
            nodes.push(bind(url).await?);
        }
        Ok(Self {
            apps_url,
            apps,
            payments,
            coordinator,
            nodes,
        })
    }
}

/// Deal a new cluster from `spec` and write it to `data_dir`, with a progress bar.
fn deal(settings: &Settings, spec: &SetupSpec) -> Result<()> {
    let dir = &settings.data_dir;
    outln!(
        "setting up a {}-of-{} cluster in {} ...",
        settings.demo.threshold,
        settings.demo.nodes,
        dir.display()
    );
    let bar = crate::setup::progress("dealing");
    let cluster = cluster::generate(spec, &mut rand::rng(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    cluster.write(dir, false)?;
    Ok(())
}

/// Start payments, the coordinator and every node of `manifest`, in that order.
async fn spawn_services(
    settings: &Settings,
    manifest: &Manifest,
    payments: TcpListener,
    coordinator: TcpListener,
    nodes: Vec<TcpListener>,
) -> Result<Vec<Running>> {
    let mut running = vec![spawn_payments(settings, payments).await?];
    running.push(spawn_coordinator(settings, coordinator).await?);
    for (node, listener) in manifest.nodes.iter().zip(nodes) {
        running.push(spawn_node(settings, node.index.get(), listener).await?);
    }
    Ok(running)
}

/// Tokens for this machine's CLI validator and auditor, so `ticketing validate` and
/// `ticketing audit` work at once; the validator's token file.
async fn register_demo_tokens(settings: &Settings) -> Result<PathBuf> {
    let token_file = validator_dir(settings).join("token");
    let audit_token_file = crate::audit::auditor_token_path(settings);
    for (file, name, role) in [
        (&token_file, "demo-validator", TokenRole::Validator),
        (&audit_token_file, "demo-auditor", TokenRole::Auditor),
    ] {
        if !file.exists() {
            // The file is the token's only holder: a lost one is replaced (and revoked).
            let (token, _) = ticketing_coordinator::register(settings, name, role, true)
                .await
                .with_context(|| format!("registering the {name} token"))?;
            write_token(file, token.expose())?;
        }
    }
    Ok(token_file)
}

/// Print where everything of the running demo is, and how to use it.
fn print_where(
    manifest: &Manifest,
    dir: &Path,
    running: &[Running],
    apps_url: &str,
    token_file: &Path,
) {
    outln!();
    outln!(
        "ticketing demo: {} of {} nodes, data in {}",
        manifest.threshold,
        manifest.nodes_total,
        dir.display()
    );
    for r in running {
        outln!("  {:<11} {}", r.name, r.url);
    }
    outln!(
        "  manifest    {} (digest {})",
        cluster::manifest_path(dir).display(),
        manifest.digest()
    );
    outln!(
        "  wallet      {apps_url}/wallet/   (passengers: open in a browser; build {})",
        ticketing_local::apps::wallet_build()
    );
    outln!(
        "  validator   {apps_url}/validator/   (conductors; register with: ticketing validator register --name bus-1 --qr; build {})",
        ticketing_local::apps::validator_build()
    );
    outln!("  or the CLIs:");
    outln!("    ticketing wallet buy --product single --card 4242424242424242");
    outln!("    ticketing wallet show --png ticket.png");
    outln!(
        "    ticketing validate --image ticket.png     (conductor; token in {})",
        token_file.display()
    );
    outln!("    ticketing validator sync                  (push scans queued offline)");
    outln!("  vouchers:  ticketing voucher create --product single --count 3");
    outln!("  auditors:  ticketing audit --state audit-state.json");
    outln!("Ctrl-C (or SIGTERM) stops everything.");
}

/// `ticketing node`: one node on `node.listen`.
pub async fn run_node(settings: &Settings) -> Result<()> {
    let manifest = cluster::read_manifest(&cluster::manifest_path(&settings.data_dir))?;
    let index = settings.node.index;
    if !manifest.nodes.iter().any(|n| n.index.get() == index) {
        let indices: Vec<String> = manifest
            .nodes
            .iter()
            .map(|n| n.index.get().to_string())
            .collect();
        anyhow::bail!(
            "this cluster has no node {index}: its nodes are {} (pass --index N or set node.index)",
            indices.join(", ")
        );
    }
    let url = manifest
        .nodes
        .iter()
        .find(|n| n.index.get() == index)
        .map(|n| n.url.clone())
        .unwrap_or_default();
    let listener = bind_listen(
        settings.node.listen,
        ticketing_config::NodeSettings::default().listen,
        &url,
        "node.listen",
    )
    .await?;
    let running = spawn_node(settings, settings.node.index, listener).await?;
    tracing::info!(service = %running.name, listen = %running.addr, "listening");
    shutdown_signal().await;
    running.stop().await
}

/// `ticketing coordinator`: the coordinator on `coordinator.listen`.
pub async fn run_coordinator(settings: &Settings) -> Result<()> {
    let manifest = cluster::read_manifest(&cluster::manifest_path(&settings.data_dir))?;
    let listener = bind_listen(
        settings.coordinator.listen,
        ticketing_config::CoordinatorSettings::default().listen,
        &manifest.coordinator.url,
        "coordinator.listen",
    )
    .await?;
    let running = spawn_coordinator(settings, listener).await?;
    tracing::info!(service = %running.name, listen = %running.addr, "listening");
    shutdown_signal().await;
    running.stop().await
}

/// `ticketing payments`: the payments service on `payments.listen`.
pub async fn run_payments(settings: &Settings) -> Result<()> {
    let manifest = cluster::read_manifest(&cluster::manifest_path(&settings.data_dir))?;
    let listener = bind_listen(
        settings.payments.listen,
        ticketing_config::PaymentsSettings::default().listen,
        &manifest.payments.url,
        "payments.listen",
    )
    .await?;
    let running = spawn_payments(settings, listener).await?;
    tracing::info!(service = %running.name, listen = %running.addr, "listening");
    shutdown_signal().await;
    running.stop().await
}
