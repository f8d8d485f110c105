//! Each service started on a listener in this process, stopped gracefully on request.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use ticketing_config::Settings;
use ticketing_config::cluster::SetupSpec;
use ticketing_config::products::ProductsFile;
use ticketing_coordinator::Coordinator;
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
    pub(crate) fn spawn<F>(
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

pub(crate) async fn on_stop(rx: oneshot::Receiver<()>) {
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

/// Bind the `http://IP:PORT` address of `url` (a manifest URL: the demo's fixed ports, or a
/// service started again where it was).
pub async fn bind(url: &str) -> Result<TcpListener> {
    let addr = socket_addr(url)?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (is another demo running? start with --base-port N, or set demo.base_port)"))
}

/// The spec `ticketing setup` and `ticketing demo` use, URLs defaulting to the demo ports.
pub fn spec(
    settings: &Settings,
    nodes: u16,
    threshold: u16,
    products: ProductsFile,
    horizon_days: u32,
) -> SetupSpec {
    let base = settings.demo.base_port;
    SetupSpec {
        node_urls: (1..=nodes)
            .map(|i| format!("http://127.0.0.1:{}", u32::from(base) + 10 + u32::from(i)))
            .collect(),
        threshold,
        payments_url: format!("http://127.0.0.1:{base}"),
        coordinator_url: format!("http://127.0.0.1:{}", u32::from(base) + 1),
        products,
        horizon_days,
        rotation_seconds: ticketing_crypto::presentation::DEFAULT_ROTATION_SECONDS,
        clock_skew_seconds: ticketing_protocol::manifest::DEFAULT_CLOCK_SKEW_SECONDS,
        now: ticketing_service::now(),
    }
}
