//! `ticketing partner add|list`: ops commands run where the coordinator runs (its database,
//! the manifest and the coordinator's key in `data_dir`), calling
//! `ticketing_coordinator::partner`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use ticketing_config::Settings;

/// `ticketing partner ...`.
#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Add a partner (a transit operator owning some products) and print its feed token and,
    /// with `--webhook`, its webhook signing secret: shown once, one per line on stdout.
    Add {
        /// Unique name, e.g. `metro`.
        #[arg(long)]
        name: String,
        /// The products it owns, comma-separated manifest product names, e.g. `single,day`.
        #[arg(long, value_delimiter = ',', required = true)]
        products: Vec<String>,
        /// POST each event of its products to this http(s) URL (signed; see
        /// docs/adr/0008-partner-feed.md).
        #[arg(long)]
        webhook: Option<String>,
    },
    /// List the partners: name, products, webhook (yes/no) and where its delivery stands.
    /// No token or secret is shown (none is stored).
    List,
}

/// Run a `ticketing partner` subcommand.
pub async fn run(settings: &Settings, cmd: PartnerCommand) -> Result<ExitCode> {
    match cmd {
        PartnerCommand::Add {
            name,
            products,
            webhook,
        } => add(settings, &name, &products, webhook.as_deref()).await,
        PartnerCommand::List => list(settings).await,
    }
}

async fn add(
    settings: &Settings,
    name: &str,
    products: &[String],
    webhook: Option<&str>,
) -> Result<ExitCode> {
    let added = ticketing_coordinator::partner::add_partner(settings, name, products, webhook)
        .await
        .context("adding the partner to the coordinator's database")?;
    let p = &added.partner;
    match &added.webhook_secret {
        Some(secret) => {
            eprintln!(
                "added partner `{}` (products {}; webhook set). Shown once, give them to the \
                 partner: the feed token (first line, `Authorization: Bearer` on \
                 GET /v1/partner/feed) and the webhook signing secret (second line, the HMAC \
                 key of the `Ticketing-Signature` header)",
                p.name,
                p.products.join(", ")
            );
            outln!("{}", added.token.expose());
            outln!("{}", secret.expose());
        }
        None => {
            eprintln!(
                "added partner `{}` (products {}; no webhook). Shown once, give it to the \
                 partner: the feed token below (`Authorization: Bearer` on GET /v1/partner/feed)",
                p.name,
                p.products.join(", ")
            );
            outln!("{}", added.token.expose());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(settings: &Settings) -> Result<ExitCode> {
    let partners = ticketing_coordinator::partner::list_partners(settings)
        .await
        .context("reading the coordinator's database")?;
    if partners.is_empty() {
        eprintln!("no partners; add one with `ticketing partner add --name NAME --products A,B`");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = partners
        .iter()
        .map(|p| {
            let w = p.webhook.as_ref();
            let field = |f: fn(&ticketing_coordinator::store::Webhook) -> String| {
                w.map_or_else(|| "-".to_owned(), f)
            };
            [
                p.name.clone(),
                p.products.join(","),
                if w.is_some() { "yes" } else { "no" }.to_owned(),
                field(|w| w.cursor.to_string()),
                field(|w| w.delivered.to_string()),
                field(|w| w.skipped.to_string()),
                field(|w| w.attempts.to_string()),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "PRODUCTS",
        "WEBHOOK",
        "CURSOR",
        "DELIVERED",
        "SKIPPED",
        "RETRYING",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    Ok(ExitCode::SUCCESS)
}
