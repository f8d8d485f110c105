//! `ticketing partner add|list` and `ticketing validator register --auditor` as an operator
//! runs them where the coordinator runs (its SQLite database and cluster in `data_dir`).

use std::path::Path;
use std::process::{Command, Output};

fn ticketing(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(args)
        .env("TICKETING_DATA_DIR", data_dir)
        .env_remove("TICKETING_CONFIG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A cluster dealt by `ticketing setup` (built-in products: single, day, week).
fn cluster() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let o = ticketing(
        &data,
        &[
            "setup",
            "--nodes",
            "3",
            "--threshold",
            "2",
            "--horizon-days",
            "2",
            "--out",
            data.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    (dir, data)
}

#[test]
fn partners_are_added_with_their_secrets_shown_once_and_listed_without() {
    let (_dir, data) = cluster();
    let o = ticketing(
        &data,
        &[
            "partner",
            "add",
            "--name",
            "metro",
            "--products",
            "single,day",
            "--webhook",
            "https://metro.example/hooks/ticketing",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 2, "token and secret, nothing else: {lines:?}");
    assert!(
        lines[0].starts_with("tkp_") && lines[0].len() == 4 + 64,
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("whsec_") && lines[1].len() == 6 + 64,
        "{lines:?}"
    );
    let (token, secret) = (lines[0].clone(), lines[1].clone());

    let o = ticketing(
        &data,
        &["partner", "add", "--name", "bus", "--products", "week"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 1, "no webhook, no secret: {lines:?}");
    assert!(lines[0].starts_with("tkp_"));

    // Refusals name the problem.
    for (args, expected) in [
        (
            vec!["--name", "tram", "--products", "single,monthly"],
            "unknown product `monthly`",
        ),
        (
            vec![
                "--name",
                "tram",
                "--products",
                "day",
                "--webhook",
                "ftp://x.example/",
            ],
            "http:// or https://",
        ),
        (
            vec![
                "--name",
                "tram",
                "--products",
                "day",
                "--webhook",
                "not a url",
            ],
            "does not parse",
        ),
        (
            vec!["--name", "metro", "--products", "day"],
            "exists already",
        ),
    ] {
        let mut all = vec!["partner", "add"];
        all.extend(args);
        let o = ticketing(&data, &all);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(expected), "{expected}: {}", text(&o));
        assert!(
            o.stdout.is_empty(),
            "nothing printed as a token: {}",
            text(&o)
        );
    }

    let o = ticketing(&data, &["partner", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let rows = stdout_lines(&o);
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].starts_with("NAME"), "{out}");
    let bus: Vec<&str> = rows[1].split_whitespace().collect();
    let metro: Vec<&str> = rows[2].split_whitespace().collect();
    assert_eq!(bus, ["bus", "week", "no", "-", "-", "-", "-"], "{out}");
    assert_eq!(
        metro,
        ["metro", "day,single", "yes", "0", "0", "0", "0"],
        "{out}"
    );
    for secret in [
        token.as_str(),
        secret.as_str(),
        "tkp_",
        "whsec_",
        "metro.example",
    ] {
        assert!(!out.contains(secret), "list shows {secret}: {out}");
    }
}

#[test]
fn auditor_tokens_are_registered_apart_from_admins() {
    let (_dir, data) = cluster();
    let o = ticketing(
        &data,
        &["validator", "register", "--name", "books", "--auditor"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("tkr_"), "{lines:?}");
    assert!(
        text(&o).contains("registered auditor `books`"),
        "{}",
        text(&o)
    );
    let o = ticketing(
        &data,
        &[
            "validator",
            "register",
            "--name",
            "x",
            "--admin",
            "--auditor",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot be used with"), "{}", text(&o));
}
