//! `ticketing setup` and `ticketing keys extend`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster};
use ticketing_config::compose;
use ticketing_config::products::ProductsFile;

#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Number of issuer nodes n.
    #[arg(long)]
    nodes: u16,
    /// Signatures needed to issue, t (1 <= t <= n).
    #[arg(long)]
    threshold: u16,
    /// Products file (TOML, `[[product]]` tables); default: single, day and week.
    #[arg(long)]
    products: Option<PathBuf>,
    /// Output directory; default: `data_dir` from the configuration.
    #[arg(long, conflicts_with = "compose")]
    out: Option<PathBuf>,
    /// Write what `docker-compose.yml` needs into this directory (the one compose runs from):
    /// the cluster in `cluster/`, a database role per service, a TLS CA and certificate for
    /// the --public-url host, and `.env`. Needs --public-url and --nodes 5.
    #[arg(long, requires = "public_url", conflicts_with_all = ["node_urls", "payments_url", "coordinator_url"])]
    compose: Option<PathBuf>,
    /// With --compose: the origin passengers and validators reach, `https://host[:port]`
    /// (nginx); the manifest's URLs become `<it>/node/<i>`, `<it>/payments`,
    /// `<it>/coordinator`.
    #[arg(long, requires = "compose")]
    public_url: Option<String>,
    /// Replace an existing cluster in the output directory (its keys are lost).
    #[arg(long)]
    force: bool,
    /// Create keysets for windows overlapping the next this many days.
    #[arg(long, default_value_t = 31)]
    horizon_days: u32,
    /// Node URLs, comma-separated (n of them); default: http://127.0.0.1:<demo.base_port+10+i>.
    #[arg(long, value_delimiter = ',')]
    node_urls: Vec<String>,
    /// Payments URL; default: http://127.0.0.1:<demo.base_port>.
    #[arg(long)]
    payments_url: Option<String>,
    /// Coordinator URL; default: http://127.0.0.1:<demo.base_port+1>.
    #[arg(long)]
    coordinator_url: Option<String>,
    /// How far a wallet's or validator's clock may be off and still be accepted (the
    /// manifest's `clock_skew_seconds`; 5 to 600).
    #[arg(long, default_value_t = ticketing_protocol::manifest::DEFAULT_CLOCK_SKEW_SECONDS,
          value_parser = clap::value_parser!(u64).range(5..=600))]
    clock_skew_seconds: u64,
}

#[derive(Debug, Args)]
pub(crate) struct ExtendArgs {
    /// Cluster directory; default: `data_dir`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Make sure keysets exist for windows overlapping the next this many days.
    #[arg(long, default_value_t = 62)]
    horizon_days: u32,
}

pub(crate) fn progress(total_hint: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} keysets")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(total_hint.to_owned());
    bar
}

pub(crate) fn setup(settings: &Settings, args: &SetupArgs) -> Result<()> {
    let products = read_products(args)?;
    if args.threshold < 1 || args.threshold > args.nodes {
        anyhow::bail!(
            "--threshold must be between 1 and --nodes ({}), got {}",
            args.nodes,
            args.threshold
        );
    }
    let out = match &args.compose {
        Some(dir) => dir.join("cluster"),
        None => args
            .out
            .clone()
            .unwrap_or_else(|| settings.data_dir.clone()),
    };
    // Refuse before spending time on keys.
    if std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some()) && !args.force {
        return Err(ticketing_config::ConfigError::AlreadyExists(out).into());
    }
    let spec = setup_spec(settings, args, products)?;
    let bar = progress("dealing");
    let cluster = cluster::generate(&spec, &mut rand::rng(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    match (&args.compose, &args.public_url) {
        (Some(dir), Some(public)) => {
            compose::write(
                dir,
                &cluster,
                public,
                args.force,
                spec.now,
                &mut rand::rng(),
            )?;
            print_summary(&cluster, &out);
            outln!(
                "tls:      {} (this deployment's CA: install it on phones and validators)",
                out.join("tls").join("ca.pem").display()
            );
            outln!(
                "compose:  {} and cluster/secrets/*-db (a database role per service)",
                dir.join(".env").display()
            );
            if dir.join("docker-compose.yml").exists() {
                outln!("next:     docker compose up -d   (in {})", dir.display());
            } else {
                outln!(
                    "next:     copy docker-compose.yml and deploy/ from the repository into {}, then \
                     docker compose up -d there",
                    dir.display()
                );
            }
        }
        _ => {
            cluster.write(&out, args.force)?;
            print_summary(&cluster, &out);
        }
    }
    Ok(())
}

/// The products of `--products`, or the built-in ones.
fn read_products(args: &SetupArgs) -> Result<ProductsFile> {
    Ok(match &args.products {
        Some(path) => ProductsFile::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => ProductsFile::builtin(),
    })
}

/// What to deal: the demo's URLs unless --node-urls, --payments-url, --coordinator-url or
/// --compose's --public-url say otherwise, and the clock skew.
fn setup_spec(
    settings: &Settings,
    args: &SetupArgs,
    products: ProductsFile,
) -> Result<cluster::SetupSpec> {
    let mut spec = ticketing_local::spec(
        settings,
        args.nodes,
        args.threshold,
        products,
        args.horizon_days,
    );
    if !args.node_urls.is_empty() {
        if args.node_urls.len() != usize::from(args.nodes) {
            anyhow::bail!(
                "--node-urls lists {} URLs for --nodes {}",
                args.node_urls.len(),
                args.nodes
            );
        }
        spec.node_urls.clone_from(&args.node_urls);
    }
    if let Some(u) = &args.payments_url {
        spec.payments_url.clone_from(u);
    }
    if let Some(u) = &args.coordinator_url {
        spec.coordinator_url.clone_from(u);
    }
    if let (Some(_), Some(public)) = (&args.compose, &args.public_url) {
        if args.nodes != compose::NODES {
            anyhow::bail!(
                "docker-compose.yml runs {} nodes (node-1 .. node-{}): pass --nodes {}",
                compose::NODES,
                compose::NODES,
                compose::NODES
            );
        }
        let urls = compose::public_urls(public, args.nodes)?;
        spec.node_urls = urls.nodes;
        spec.payments_url = urls.payments;
        spec.coordinator_url = urls.coordinator;
    }
    spec.clock_skew_seconds = args.clock_skew_seconds;
    Ok(spec)
}

fn print_summary(cluster: &Cluster, out: &std::path::Path) {
    let m = &cluster.manifest;
    outln!(
        "cluster: {} of {} nodes, {} keysets, manifest version {}",
        m.threshold,
        m.nodes_total,
        m.keysets.len(),
        m.version
    );
    outln!(
        "manifest: {} (digest {})",
        cluster::manifest_path(out).display(),
        m.digest()
    );
    outln!(
        "secrets:  {} (mode 0600; give each node only its own bundle)",
        out.join("secrets").display()
    );
}

pub(crate) fn extend(settings: &Settings, args: &ExtendArgs) -> Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.clone());
    let mut cluster =
        Cluster::read(&dir).with_context(|| format!("reading the cluster in {}", dir.display()))?;
    let bar = progress("dealing");
    let added = cluster::extend(
        &mut cluster,
        args.horizon_days,
        ticketing_service::now(),
        &mut rand::rng(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish();
    if added == 0 {
        outln!(
            "nothing to add: keysets already cover the next {} days",
            args.horizon_days
        );
        return Ok(());
    }
    cluster.save(&dir)?;
    compose::keep_owner(&dir)?;
    outln!(
        "added {added} keysets; restart every service (e.g. `docker compose restart` for the \
         compose deployment) so that they load the new manifest and shares; wallets accept the \
         new manifest with `ticketing wallet pin`"
    );
    print_summary(&cluster, &dir);
    Ok(())
}
