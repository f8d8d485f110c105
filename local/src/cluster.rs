//! A whole cluster on 127.0.0.1 ports chosen by the OS, in this process.

use std::path::Path;

use anyhow::{Result, anyhow};
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster};
use ticketing_config::products::ProductsFile;
use ticketing_node::Node;
use tokio::net::TcpListener;

use crate::service::{
    Running, bind, on_stop, spawn_apps, spawn_coordinator, spawn_node, spawn_payments, spec,
};

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
        let mut spec = spec(&settings, nodes, threshold, products, 31);
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

    /// Stop the payments service (its address refuses connections until started again).
    pub async fn stop_payments(&mut self) -> Result<()> {
        if let Some(p) = self.payments.take() {
            p.stop().await?;
        }
        Ok(())
    }

    /// Start the payments service again on its manifest address.
    pub async fn start_payments(&mut self) -> Result<()> {
        let url = self.cluster.manifest.payments.url.clone();
        self.payments = Some(spawn_payments(&self.settings, bind(&url).await?).await?);
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
