//! Composing services in one process: `ticketing demo`, `ticketing node`, `ticketing payments`,
//! and the in-process clusters the integration tests and `ticketing bench` start.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster};
use ticketing_config::products::ProductsFile;
use ticketing_coordinator::{Coordinator, TokenRole};
use ticketing_node::Node;
use ticketing_payments::service::Payments;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A service running in this process.
#[derive(Debug)]
pub struct Running {
    /// e.g. `node 3`.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn spawn<F>(
        name: String,
        listener: TcpListener,
        serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
    ) -> Result<Self>
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        // Every line a service logs names it (several run in one process in the demo).
        let span = tracing::info_span!("service", name = %name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            serve(listener, stopped),
            span,
        ));
        Ok(Self {
            name,
            url: format!("http://{addr}"),
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Stop accepting, finish in-flight requests, and wait for the task.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await??;
        Ok(())
    }
}

async fn on_stop(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// Start node `index` of the cluster in `settings.data_dir` on `listener`.
pub async fn spawn_node(settings: &Settings, index: u16, listener: TcpListener) -> Result<Running> {
    let node = Node::open(settings, &settings.data_dir, index)
        .await
        .with_context(|| format!("opening node {index}"))?;
    serve_metrics(settings, node.metrics()).await?;
    Running::spawn(format!("node {index}"), listener, move |l, rx| {
        node.serve(l, on_stop(rx))
    })
}

/// Start the payments service of the cluster in `settings.data_dir` on `listener`.
pub async fn spawn_payments(settings: &Settings, listener: TcpListener) -> Result<Running> {
    let payments = Payments::load(settings).await.context("opening payments")?;
    serve_metrics(settings, payments.metrics().clone()).await?;
    Running::spawn("payments".into(), listener, move |l, rx| {
        ticketing_payments::service::serve(l, payments, on_stop(rx))
    })
}

/// Start the coordinator of the cluster in `settings.data_dir` on `listener`.
pub async fn spawn_coordinator(settings: &Settings, listener: TcpListener) -> Result<Running> {
    let coordinator = Coordinator::open(settings, &settings.data_dir)
        .await
        .context("opening the coordinator")?;
    serve_metrics(settings, coordinator.metrics()).await?;
    Running::spawn("coordinator".into(), listener, move |l, rx| {
        coordinator.serve(l, on_stop(rx))
    })
}

/// With `http.metrics_listen`, serve the service's `/metrics` there (the service's own address
/// then does not): for as long as the process runs.
async fn serve_metrics(settings: &Settings, metrics: ticketing_service::Metrics) -> Result<()> {
    let Some(addr) = settings.http.metrics_listen else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (http.metrics_listen)"))?;
    tracing::info!(listen = %addr, "metrics listening");
    tokio::spawn(ticketing_service::serve(
        listener,
        ticketing_service::metrics_router(metrics),
        std::future::pending(),
    ));
    Ok(())
}

/// Serve the browser apps for the cluster of `manifest` on `listener`.
pub fn spawn_apps(
    manifest: &ticketing_protocol::manifest::Manifest,
    listener: TcpListener,
) -> Result<Running> {
    let router = crate::apps::router(manifest)?;
    Running::spawn("apps".into(), listener, move |l, rx| {
        ticketing_service::serve(l, router, on_stop(rx))
    })
}

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

/// `host:port` of an `http://host:port` URL.
pub fn socket_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs can be served locally"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .with_context(|| format!("{url}: expected http://IP:PORT"))
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

async fn bind(url: &str) -> Result<TcpListener> {
    let addr = socket_addr(url)?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (is another demo running? start with --base-port N, or set demo.base_port)"))
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
    let spec = crate::setup::spec(
        settings,
        settings.demo.nodes,
        settings.demo.threshold,
        ProductsFile::builtin(),
        31,
    );
    let existing = cluster::manifest_path(dir).exists();
    if existing {
        // A cluster made for other ports would silently answer on the old ones.
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
    }
    // Every port is bound before anything is written: a busy port leaves no half-made cluster.
    let apps_url = apps_origin(
        &spec.payments_url,
        settings.demo.base_port.saturating_add(2),
    )?;
    let apps_listener = bind(&apps_url).await?;
    let payments_listener = bind(&spec.payments_url).await?;
    let coordinator_listener = bind(&spec.coordinator_url).await?;
    let mut node_listeners = Vec::new();
    for url in &spec.node_urls {
        node_listeners.push(bind(url).await?);
    }
    if !existing {
        outln!(
            "setting up a {}-of-{} cluster in {} ...",
            settings.demo.threshold,
            settings.demo.nodes,
            dir.display()
        );
        let bar = crate::setup::progress("dealing");
        let cluster = cluster::generate(&spec, &mut rand::rng(), &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        cluster.write(dir, false)?;
    }
    let cluster =
        Cluster::read(dir).with_context(|| format!("reading the cluster in {}", dir.display()))?;
    let manifest = &cluster.manifest;

    // The apps' origin, allowed by CORS on every service (the wallet calls payments and nodes).
    let mut settings = settings.clone();
    if settings.http.metrics_listen.take().is_some() {
        tracing::warn!(
            "http.metrics_listen is for one service per process; the demo serves /metrics on each service"
        );
    }
    if !settings.http.cors_origins.contains(&apps_url) {
        settings.http.cors_origins.push(apps_url.clone());
    }
    let settings = &settings;
    let apps = spawn_apps(manifest, apps_listener)?;

    let mut running = vec![spawn_payments(settings, payments_listener).await?];
    running.push(spawn_coordinator(settings, coordinator_listener).await?);
    for (node, listener) in manifest.nodes.iter().zip(node_listeners) {
        running.push(spawn_node(settings, node.index.get(), listener).await?);
    }
    // Tokens for this machine's CLI validator and auditor, so `ticketing validate` and
    // `ticketing audit` work at once.
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

    outln!();
    outln!(
        "ticketing demo: {} of {} nodes, data in {}",
        manifest.threshold,
        manifest.nodes_total,
        dir.display()
    );
    for r in &running {
        outln!("  {:<11} {}", r.name, r.url);
    }
    outln!(
        "  manifest    {} (digest {})",
        cluster::manifest_path(dir).display(),
        manifest.digest()
    );
    outln!(
        "  wallet      {apps_url}/wallet/   (passengers: open in a browser; build {})",
        crate::apps::wallet_build()
    );
    outln!(
        "  validator   {apps_url}/validator/   (conductors; register with: ticketing validator register --name bus-1 --qr; build {})",
        crate::apps::validator_build()
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

    shutdown_signal().await;
    outln!("stopping ...");
    running.push(apps);
    for r in running {
        r.stop().await?;
    }
    Ok(())
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

/// Database URLs for an in-process cluster (default: SQLite files in the cluster directory).
#[derive(Debug, Clone, Default)]
pub struct Databases {
    /// Payments database URL.
    pub payments: Option<String>,
    /// Coordinator database URL.
    pub coordinator: Option<String>,
    /// Node i's database URL at position i-1.
    pub nodes: Vec<String>,
}

/// An in-process cluster on 127.0.0.1 ports chosen by the OS (tests, benchmarks).
#[derive(Debug)]
pub struct LocalCluster {
    /// Settings pointing at the cluster directory.
    pub settings: Settings,
    /// Node i's settings at position i-1 (its own database).
    pub node_settings: Vec<Settings>,
    /// The cluster (with secrets).
    pub cluster: Cluster,
    /// Payments.
    pub payments: Option<Running>,
    /// The coordinator; `None` while stopped.
    pub coordinator: Option<Running>,
    /// Node i at position i-1; `None` while stopped.
    pub nodes: Vec<Option<Running>>,
    /// The browser apps (`/wallet/`), on an origin every service allows.
    pub apps: Option<Running>,
}

impl LocalCluster {
    /// Set up an n-node, threshold-t cluster in `dir` and start payments and every node. Its
    /// products are the built-in ones without their sale minimums, so a ticket bought is the
    /// current window's and usable at once, whatever the hour a test runs at (the minimums
    /// have tests of their own: [`LocalCluster::start_with_products`]). Rate limits are off
    /// (tests and benchmarks make thousands of requests from one address; the limits have
    /// their own tests).
    pub async fn start(
        dir: &Path,
        nodes: u16,
        threshold: u16,
        mut settings: Settings,
        databases: Databases,
    ) -> Result<Self> {
        settings.http.requests_per_minute = 0;
        settings.payments.checkouts_per_minute = 0;
        settings.payments.voucher_failures_per_hour = 0;
        let mut products = ProductsFile::builtin();
        for p in &mut products.product {
            p.min_remaining_minutes = 0;
        }
        Self::start_with_products(dir, nodes, threshold, settings, databases, products).await
    }

    /// [`LocalCluster::start`] with these products.
    pub async fn start_with_products(
        dir: &Path,
        nodes: u16,
        threshold: u16,
        mut settings: Settings,
        databases: Databases,
        products: ProductsFile,
    ) -> Result<Self> {
        settings.data_dir = dir.to_owned();
        let apps_listener = TcpListener::bind("127.0.0.1:0").await?;
        let apps_origin = format!("http://{}", apps_listener.local_addr()?);
        settings.http.cors_origins.push(apps_origin);
        if let Some(url) = &databases.payments {
            settings.payments.database_url.clone_from(url);
        }
        if let Some(url) = &databases.coordinator {
            settings.coordinator.database_url.clone_from(url);
        }
        let node_settings: Vec<Settings> = (0..usize::from(nodes))
            .map(|i| {
                let mut s = settings.clone();
                if let Some(url) = databases.nodes.get(i) {
                    s.node.database_url.clone_from(url);
                }
                s
            })
            .collect();
        let payments_listener = TcpListener::bind("127.0.0.1:0").await?;
        let coordinator_listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut node_listeners = Vec::new();
        for _ in 0..nodes {
            node_listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let mut spec = crate::setup::spec(&settings, nodes, threshold, products, 31);
        spec.payments_url = format!("http://{}", payments_listener.local_addr()?);
        spec.coordinator_url = format!("http://{}", coordinator_listener.local_addr()?);
        spec.node_urls = node_listeners
            .iter()
            .map(|l| l.local_addr().map(|a| format!("http://{a}")))
            .collect::<std::io::Result<_>>()?;
        let cluster = cluster::generate(&spec, &mut rand::rng(), &mut |_, _| {})?;
        cluster.write(dir, false)?;
        let payments = Some(spawn_payments(&settings, payments_listener).await?);
        let coordinator = Some(spawn_coordinator(&settings, coordinator_listener).await?);
        let mut running = Vec::new();
        for ((listener, i), s) in node_listeners.into_iter().zip(1u16..).zip(&node_settings) {
            running.push(Some(spawn_node(s, i, listener).await?));
        }
        let apps = Some(spawn_apps(&cluster.manifest, apps_listener)?);
        Ok(Self {
            settings,
            node_settings,
            cluster,
            payments,
            coordinator,
            nodes: running,
            apps,
        })
    }

    /// Stop the coordinator; [`LocalCluster::start_coordinator`] binds its address again.
    pub async fn stop_coordinator(&mut self) -> Result<()> {
        if let Some(c) = self.coordinator.take() {
            c.stop().await?;
        }
        Ok(())
    }

    /// Start the coordinator again on its manifest address.
    pub async fn start_coordinator(&mut self) -> Result<()> {
        let url = self.cluster.manifest.coordinator.url.clone();
        self.coordinator = Some(spawn_coordinator(&self.settings, bind(&url).await?).await?);
        Ok(())
    }

    /// Replace node `index` with a service of the caller's making on the same address (e.g. a
    /// misbehaving node in tests).
    pub async fn replace_node(&mut self, index: u16, node: Node) -> Result<()> {
        self.stop_node(index).await?;
        let url = self.node_url(index)?;
        let running = Running::spawn(format!("node {index}"), bind(&url).await?, move |l, rx| {
            node.serve(l, on_stop(rx))
        })?;
        if let Some(slot) = self.nodes.get_mut(usize::from(index).saturating_sub(1)) {
            *slot = Some(running);
        }
        Ok(())
    }

    fn node_url(&self, index: u16) -> Result<String> {
        self.cluster
            .manifest
            .nodes
            .iter()
            .find(|n| n.index.get() == index)
            .map(|n| n.url.clone())
            .ok_or_else(|| anyhow!("no node {index}"))
    }

    /// Stop node `index`; [`LocalCluster::start_node`] binds its manifest address again.
    pub async fn stop_node(&mut self, index: u16) -> Result<()> {
        let slot = self
            .nodes
            .get_mut(usize::from(index).saturating_sub(1))
            .ok_or_else(|| anyhow!("no node {index}"))?;
        if let Some(r) = slot.take() {
            r.stop().await?;
        }
        Ok(())
    }

    /// Start node `index` again on its manifest address.
    pub async fn start_node(&mut self, index: u16) -> Result<()> {
        let url = self.node_url(index)?;
        let settings = self
            .node_settings
            .get(usize::from(index).saturating_sub(1))
            .ok_or_else(|| anyhow!("no node {index}"))?;
        let running = spawn_node(settings, index, bind(&url).await?).await?;
        if let Some(slot) = self.nodes.get_mut(usize::from(index).saturating_sub(1)) {
            *slot = Some(running);
        }
        Ok(())
    }

    /// Stop everything.
    pub async fn stop(mut self) -> Result<()> {
        for slot in &mut self.nodes {
            if let Some(r) = slot.take() {
                r.stop().await?;
            }
        }
        if let Some(p) = self.payments.take() {
            p.stop().await?;
        }
        if let Some(c) = self.coordinator.take() {
            c.stop().await?;
        }
        if let Some(a) = self.apps.take() {
            a.stop().await?;
        }
        Ok(())
    }

    /// The wallet PWA's URL.
    pub fn wallet_url(&self) -> Option<String> {
        self.apps.as_ref().map(|a| format!("{}/wallet/", a.url))
    }

    /// The validator PWA's URL.
    pub fn validator_url(&self) -> Option<String> {
        self.apps.as_ref().map(|a| format!("{}/validator/", a.url))
    }
}
