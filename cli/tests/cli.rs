//! The `ticketing` binary as a user runs it: setup refusals and files, config example, and the
//! wallet against a real cluster on loopback.

use std::path::Path;
use std::process::{Command, Output};

use ticketing_config::Settings;
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_local::{Databases, LocalCluster};

fn ticketing(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(args)
        .env("TICKETING_DATA_DIR", data_dir)
        .env_remove("TICKETING_CONFIG")
        .output()
        .unwrap()
}

/// Run the binary off the async runtime (the cluster under test lives on it).
fn runner(data: &Path) -> impl Fn(&[&str]) -> tokio::task::JoinHandle<Output> + use<> {
    let data = data.to_owned();
    move |args: &[&str]| {
        let data = data.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ticketing(&data, &args)
        })
    }
}

/// `ticketing setup` of a 1-of-1 cluster in `<dir>/c` (no service started).
fn one_node_cluster(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("c");
    let o = ticketing(
        dir,
        &[
            "setup",
            "--nodes",
            "1",
            "--threshold",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn setup_refuses_bad_thresholds_and_existing_clusters_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    let out_s = out.to_str().unwrap();

    let o = ticketing(
        dir.path(),
        &["setup", "--nodes", "3", "--threshold", "4", "--out", out_s],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--threshold must be between 1 and --nodes (3), got 4"),
        "{}",
        text(&o)
    );
    let o = ticketing(
        dir.path(),
        &["setup", "--nodes", "3", "--threshold", "0", "--out", out_s],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("got 0"), "{}", text(&o));
    assert!(!out.exists(), "a refused setup wrote files");

    let o = ticketing(
        dir.path(),
        &[
            "setup",
            "--nodes",
            "3",
            "--threshold",
            "2",
            "--out",
            out_s,
            "--horizon-days",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 of 3 nodes"), "{}", text(&o));
    #[cfg(unix)]
    for f in [
        "node-1.json",
        "node-2.json",
        "node-3.json",
        "payments.json",
        "coordinator.json",
    ] {
        assert_eq!(mode(&out.join("secrets").join(f)), 0o600, "{f}");
    }
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();

    let o = ticketing(
        dir.path(),
        &["setup", "--nodes", "3", "--threshold", "2", "--out", out_s],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("pass --force"), "{}", text(&o));
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        manifest,
        "refused setup changed the manifest"
    );

    // keys extend adds future keysets and keeps the old ones byte for byte.
    let o = ticketing(
        dir.path(),
        &["keys", "extend", "--dir", out_s, "--horizon-days", "40"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("added"), "{}", text(&o));
    let before: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let old = before["keysets"].as_array().unwrap();
    assert_eq!(&after["keysets"].as_array().unwrap()[..old.len()], &old[..]);
    assert!(after["keysets"].as_array().unwrap().len() > old.len());
}

#[test]
fn config_example_is_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let o = ticketing(dir.path(), &["config", "example"]);
    assert!(o.status.success());
    let file = dir.path().join("t.toml");
    std::fs::write(&file, &o.stdout).unwrap();
    let settings = Settings::load(Some(&file)).unwrap();
    assert_eq!(settings.demo.threshold, 3);
}

/// Shell completions for the common shells, and every command's help names the environment
/// variables the command reads.
#[test]
fn completions_and_the_environment_in_every_help() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = ticketing(dir.path(), &["completions", shell]);
        assert!(o.status.success(), "{}", text(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("validator") && script.contains("wallet"),
            "{shell}"
        );
    }
    for args in [
        &["--help"][..],
        &["validate", "--help"][..],
        &["validator", "sync", "--help"][..],
        &["audit", "--help"][..],
        &["demo", "--help"][..],
    ] {
        let o = ticketing(dir.path(), args);
        assert!(o.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&o.stdout);
        for var in [
            "TICKETING_DATA_DIR",
            "TICKETING_VALIDATOR_TOKEN",
            "RUST_LOG",
        ] {
            assert!(help.contains(var), "{args:?} does not name {var}");
        }
    }
    let o = ticketing(dir.path(), &["demo", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--base-port"));
}

/// `demo --base-port/--data-dir`: a busy port stops it before anything is written; a cluster
/// made for other ports is refused with what to do, not served on the old ports.
#[test]
fn the_demo_refuses_a_busy_port_or_a_cluster_made_for_other_ports() {
    let dir = tempfile::tempdir().unwrap();
    // The apps' port (base + 2) is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = taken.local_addr().unwrap().port() - 2;
    let fresh = dir.path().join("fresh");
    let o = ticketing(
        dir.path(),
        &[
            "demo",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            fresh.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--base-port"), "{}", text(&o));
    assert!(
        !fresh.exists(),
        "a failed first start left {}",
        fresh.display()
    );
    // A cluster set up for the default ports, started with others.
    let made = one_node_cluster(dir.path());
    let o = ticketing(
        dir.path(),
        &[
            "demo",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            made.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("was set up for payments at http://127.0.0.1:7600"),
        "{}",
        text(&o)
    );
    drop(taken);
}

/// A service as a daemon: SIGTERM stops it gracefully (exit 0, as Ctrl-C), its log has no
/// colour codes when not a terminal, `RUST_LOG` is honoured, and `log.format = "json"` writes
/// one object per line naming the service.
#[cfg(unix)]
#[test]
fn a_service_stops_on_sigterm_and_logs_plainly_or_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = one_node_cluster(dir.path());
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticketing"));
        cmd.arg("payments")
            .env("TICKETING_DATA_DIR", &out)
            .env("TICKETING_PAYMENTS__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "debug,sqlx=warn")
            .env_remove("TICKETING_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if json {
            cmd.env("TICKETING_LOG__FORMAT", "json");
        }
        let mut child = cmd.spawn().unwrap();
        // Wait for it to listen: the first line says so.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        loop {
            first.clear();
            assert!(std::io::BufRead::read_line(&mut stderr, &mut first).unwrap() > 0);
            if first.contains("listening") {
                break;
            }
        }
        // One request, logged at debug level (RUST_LOG=debug; the default filter is info).
        let addr = first
            .split(['=', '"', ' ', ','])
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap()
            .trim()
            .to_owned();
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(&mut conn, b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "SIGTERM: {status:?}\n{first}{rest}");
        let log = format!("{first}{rest}");
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a piped log: {log}"
        );
        assert!(log.contains("stopping"), "{log}");
        // RUST_LOG=debug: debug lines appear (the default filter is info).
        assert!(
            log.contains("DEBUG") || log.contains("\"level\":\"DEBUG\""),
            "{log}"
        );
        if json {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v.get("level").is_some(), "{line}");
            }
            assert!(first.contains("\"service\":\"payments\""), "{first}");
        } else {
            assert!(first.contains("service=payments"), "{first}");
        }
    }
}

/// A reader that goes away ends a command quietly with exit 0, as Unix tools do (it used to
/// panic on the broken pipe); `voucher create`, whose codes exist nowhere else, exits 2 naming
/// the vouchers that were not printed.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = one_node_cluster(dir.path());
    for (args, exit) in [
        (
            &["voucher", "create", "--product", "single", "--count", "50"][..],
            2,
        ),
        (&["config", "example"][..], 0),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(args)
            .env("TICKETING_DATA_DIR", &out)
            .env_remove("TICKETING_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader closes before the command writes anything.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(o.status.code(), Some(exit), "{args:?}: {stderr}");
        if exit == 2 {
            // Codes that exist nowhere else: the command says which vouchers to void.
            assert!(
                stderr.contains("50 voucher(s) were stored but not printed"),
                "{stderr}"
            );
            assert!(stderr.contains("ticketing voucher void "), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_buys_lists_and_shows_a_ticket_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 5, 3, Settings::default(), Databases::default())
        .await
        .unwrap();
    let run = runner(dir.path());

    let o = run(&[
        "wallet",
        "buy",
        "--product",
        "day",
        "--card",
        "4242 4242 4242 4242",
        "--count",
        "2",
    ])
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("bought 2 day ticket(s)"), "{}", text(&o));
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("wallet.json")), 0o600);

    // A typo in a voucher is caught before any request; a declined card buys nothing.
    let o = run(&[
        "wallet",
        "buy",
        "--product",
        "single",
        "--voucher",
        "AAAA-AAAA-AAAA-AAAA",
    ])
    .await
    .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("mistyped"), "{}", text(&o));
    let o = run(&[
        "wallet",
        "buy",
        "--product",
        "day",
        "--card",
        "4000000000000002",
    ])
    .await
    .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("card_declined"), "{}", text(&o));

    let o = run(&["wallet", "list"]).await.unwrap();
    assert_eq!(
        text(&o)
            .lines()
            .filter(|l| l.contains("day") && l.contains("valid"))
            .count(),
        2,
        "{}",
        text(&o)
    );

    let o = run(&["wallet", "show", "2", "--payload-only"])
        .await
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let payload = String::from_utf8(o.stdout).unwrap();
    let shown = Presentation::from_text(payload.trim_end_matches('\n')).unwrap();
    let keyset = cluster
        .cluster
        .manifest
        .keyset(&shown.ticket.keyset_id)
        .unwrap();
    let now = epoch_at(ticketing_service::now(), 30);
    shown.verify(&keyset.public_key, now, 1).unwrap();

    let png = dir.path().join("t.png");
    let o = run(&["wallet", "show", "--png", png.to_str().unwrap()])
        .await
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    cluster.stop().await.unwrap();
}

/// `wallet print`: a PDF page and a PNG of a single's static code; the validator accepts the
/// picture once (offline here, its own seen list); a pass cannot be printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printed_single_is_accepted_once_and_a_pass_is_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 3, 2, Settings::default(), Databases::default())
        .await
        .unwrap();
    let run = runner(dir.path());
    for product in ["single", "day"] {
        let o = run(&[
            "wallet",
            "buy",
            "--product",
            product,
            "--card",
            "4242424242424242",
        ])
        .await
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let pdf = dir.path().join("ticket.pdf");
    let o = run(&["wallet", "print", "1", "--out", pdf.to_str().unwrap()])
        .await
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("accepted once"), "{}", text(&o));
    assert!(std::fs::read(&pdf).unwrap().starts_with(b"%PDF-1.4"));
    #[cfg(unix)]
    assert_eq!(mode(&pdf) & 0o777, 0o600);
    let o = run(&["wallet", "print", "2", "--out", "pass.pdf"])
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not_printable") || text(&o).contains("cannot be printed"),
        "{}",
        text(&o)
    );
    let o = run(&["wallet", "print", "1", "--out", "ticket.txt"])
        .await
        .unwrap();
    assert!(text(&o).contains(".pdf or .png"), "{}", text(&o));

    let png = dir.path().join("ticket.png");
    let o = run(&["wallet", "print", "1", "--out", png.to_str().unwrap()])
        .await
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let image = png.to_str().unwrap();
    let o = run(&["validate", "--offline", "--image", image])
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("VALID (printed: this ride only)"),
        "{}",
        text(&o)
    );
    let o = run(&["validate", "--offline", "--json", "--image", image])
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("\"spent\""), "{}", text(&o));
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_purchase_survives_an_outage_and_retry_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::start(dir.path(), 5, 3, Settings::default(), Databases::default())
            .await
            .unwrap();
    let run = runner(dir.path());
    for i in [2, 3, 5] {
        cluster.stop_node(i).await.unwrap();
    }
    let o = run(&[
        "wallet",
        "buy",
        "--product",
        "week",
        "--card",
        "4242424242424242",
    ])
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("kept in the wallet"), "{}", text(&o));
    let o = run(&["wallet", "list"]).await.unwrap();
    assert!(text(&o).contains("1 purchase(s) waiting"), "{}", text(&o));

    for i in [2, 3, 5] {
        cluster.start_node(i).await.unwrap();
    }
    let o = run(&["wallet", "retry"]).await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("bought 1 week ticket(s)"), "{}", text(&o));
    let o = run(&["wallet", "list"]).await.unwrap();
    assert!(text(&o).contains("week"), "{}", text(&o));
    assert!(!text(&o).contains("waiting"), "{}", text(&o));
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reports_clean_and_exits_non_zero_on_violations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::start(dir.path(), 3, 2, Settings::default(), Databases::default())
            .await
            .unwrap();
    let run = runner(dir.path());
    let o = run(&[
        "wallet",
        "buy",
        "--product",
        "single",
        "--card",
        "4242424242424242",
    ])
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Without a token the redemption counts cannot be read: a violation, and the command
    // (not the auditor library) says where a token comes from.
    let o = run(&["audit"]).await.unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("TICKETING_AUDIT_TOKEN"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no coordinator token was given"),
        "{}",
        text(&o)
    );
    // An auditor token where `ticketing demo` puts it.
    let (token, _) = ticketing_coordinator::register(
        &cluster.settings,
        "auditor",
        ticketing_coordinator::TokenRole::Auditor,
        false,
    )
    .await
    .unwrap();
    std::fs::create_dir_all(dir.path().join("auditor")).unwrap();
    std::fs::write(dir.path().join("auditor/token"), token.expose()).unwrap();

    let state = dir.path().join("audit-state.json");
    let state = state.to_str().unwrap();
    let o = run(&["audit", "--state", state]).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("CLEAN"), "{}", text(&o));
    assert!(Path::new(state).exists());
    let o = run(&["audit", "--state", state, "--json"]).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["clean"], true);
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3);

    // The wallet's evidence (none here) is what auditors are handed; a file that is not
    // evidence is an error (2), not a verdict.
    let o = run(&["wallet", "evidence"]).await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, br#"{"node": "x"}"#).unwrap();
    let o = run(&["audit", "--evidence", bad.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not blame evidence"), "{}", text(&o));

    // What cannot be checked is a violation: a wrong token, a node down.
    let o = run(&["audit", "--coordinator-token", "tkr_00"])
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("coordinator_unavailable"), "{}", text(&o));
    cluster.stop_node(2).await.unwrap();
    let o = run(&["audit", "--state", state, "--json"]).await.unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["violations"][0]["code"], "node_unreachable");
    assert_eq!(report["violations"][0]["node"], 2);
    // Nothing readable at all: the audit could not run (2), which is not a finding (1).
    cluster.stop_node(1).await.unwrap();
    cluster.stop_node(3).await.unwrap();
    let o = run(&["audit"]).await.unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no node could be read"), "{}", text(&o));
    cluster.stop().await.unwrap();
}

/// `ticketing setup --compose`: the files docker-compose.yml mounts, secrets 0600, the
/// manifest's URLs the public ones, refusals named.
#[test]
fn setup_compose_writes_what_compose_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = ["setup", "--compose", d, "--nodes", "5", "--threshold", "3"];
    let refused = ticketing(
        dir.path(),
        &[&base[..], &["--public-url", "http://t.test"]].concat(),
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("https://"), "{}", text(&refused));
    let refused = ticketing(
        dir.path(),
        &[
            "setup",
            "--compose",
            d,
            "--public-url",
            "https://t.test",
            "--nodes",
            "4",
            "--threshold",
            "3",
        ],
    );
    assert!(text(&refused).contains("--nodes 5"), "{}", text(&refused));

    let made = ticketing(
        dir.path(),
        &[&base[..], &["--public-url", "https://t.test:8443"]].concat(),
    );
    assert!(made.status.success(), "{}", text(&made));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("cluster/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["nodes"][4]["url"], "https://t.test:8443/node/5");
    assert_eq!(manifest["payments"]["url"], "https://t.test:8443/payments");
    assert_eq!(
        manifest["coordinator"]["url"],
        "https://t.test:8443/coordinator"
    );
    let secrets = dir.path().join("cluster/secrets");
    for name in [
        "node-1.json",
        "node-1-db",
        "coordinator-db",
        "postgres-init.sql",
        "postgres-password",
        "tls-key.pem",
    ] {
        assert_eq!(mode(&secrets.join(name)) & 0o777, 0o600, "{name}");
    }
    let db = std::fs::read_to_string(secrets.join("node-3-db")).unwrap();
    assert!(
        db.starts_with("postgres://node3:") && db.ends_with("@postgres:5432/node3"),
        "{db}"
    );
    let init = std::fs::read_to_string(secrets.join("postgres-init.sql")).unwrap();
    assert_eq!(init.matches("CREATE ROLE").count(), 7, "{init}");
    let env = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    assert!(env.contains("TICKETING_HTTPS_PORT=8443"), "{env}");
    assert!(dir.path().join("cluster/tls/ca.pem").exists());
    let again = ticketing(
        dir.path(),
        &[&base[..], &["--public-url", "https://t.test"]].concat(),
    );
    assert!(text(&again).contains("--force"), "{}", text(&again));
}

/// docker-compose.yml started as local processes (scripts/compose-local: a network namespace,
/// a mount namespace per service with only its volumes and secrets, Debian's nginx and
/// PostgreSQL), a ticket bought through nginx and redeemed, keys extended, a clean stop.
/// Needs root, nginx, PostgreSQL, docker-compose and libnss-wrapper; skipped without them
/// unless `TICKETING_REQUIRE_COMPOSE=1` (as in CI).
#[test]
fn the_compose_file_starts_and_sells_a_ticket_through_nginx() {
    let missing: Vec<&str> = [
        "/usr/sbin/nginx",
        "/usr/bin/docker-compose",
        "/usr/bin/unshare",
        "/usr/bin/setpriv",
        "/usr/bin/curl",
        "/usr/lib/postgresql",
        "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
        "/usr/bin/python3",
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !missing.is_empty() || !root {
        assert!(
            std::env::var_os("TICKETING_REQUIRE_COMPOSE").is_none(),
            "TICKETING_REQUIRE_COMPOSE is set but this is not root or lacks {missing:?}"
        );
        eprintln!("skipped: needs root and {missing:?}");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/compose-local");
    // Debian's Python, which has PyYAML (python3-yaml, a dependency of docker-compose).
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ticketing"))
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for step in [
        "redeemed it online",
        "the same QR again is refused",
        "keys extend: ",
        "clean stop",
    ] {
        assert!(log.contains(step), "{step}: {log}");
    }
    if std::env::var_os("TICKETING_REQUIRE_BROWSER").is_some() {
        assert!(
            log.contains("the wallet PWA bought a ticket through nginx"),
            "{log}"
        );
    }
}
