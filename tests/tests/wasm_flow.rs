//! The crypto runs inside wasm32: `scripts/wasm selftest` builds `ticketing-wasm-flow` for
//! wasm32-unknown-unknown and binds it for Node, Node runs the whole issuance flow
//! (blind, partials, combine, unblind, verify, present), and this test checks the report:
//! every check true, every byte equal to the same flow run natively (C blst through `blstrs`
//! here, pure Rust `blstrs_plus` in wasm), and the wasm-made signature accepted by the `blst`
//! crate's standard min-sig verification.
//!
//! No skipping: without a wasm32 toolchain this fails with the script's message saying what to
//! install.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use ticketing_crypto::domain::BLS_DST;
use ticketing_crypto::issuance::ticket_message;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::HolderPublicKey;

/// (seed, threshold, nodes) runs.
const RUNS: [(u64, u32, u32); 2] = [(7, 3, 5), (7, 5, 9)];

/// Why the test failed. Debug prints the message as is, so command output keeps its newlines
/// when the test harness reports the returned error.
struct Failure(String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Failure(msg.into()))
}

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { fail(msg()) }
}

fn workspace_root() -> Result<PathBuf> {
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match tests_dir.parent() {
        Some(root) => Ok(root.to_path_buf()),
        None => fail(format!("{} has no parent", tests_dir.display())),
    }
}

/// Run a command to completion; on failure, say which and show its stderr and stdout.
fn run(what: &str, cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| Failure(format!("{what}: could not start {cmd:?}: {e}")))?;
    ensure(out.status.success(), || {
        format!(
            "{what} failed ({}): {cmd:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        )
    })?;
    Ok(out)
}

/// Build and bind the self-test module; returns the package directory the script printed.
fn build_selftest(root: &Path) -> Result<PathBuf> {
    let out = run(
        "scripts/wasm selftest (wasm32 build + wasm-bindgen)",
        Command::new(root.join("scripts/wasm"))
            .arg("selftest")
            .current_dir(root),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(pkg) = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    else {
        return fail("scripts/wasm selftest printed no package directory");
    };
    let pkg = PathBuf::from(pkg);
    ensure(pkg.join("ticketing_wasm_flow.js").is_file(), || {
        format!(
            "scripts/wasm selftest printed {}, which holds no ticketing_wasm_flow.js",
            pkg.display()
        )
    })?;
    Ok(pkg)
}

fn run_in_node(root: &Path, pkg: &Path, seed: u64, t: u32, n: u32) -> Result<Value> {
    let what = format!("node run.mjs, {t}-of-{n} flow in wasm");
    let out = run(
        &what,
        Command::new("node")
            .arg(root.join("tests/wasm-flow/run.mjs"))
            .arg(pkg)
            .args([seed.to_string(), t.to_string(), n.to_string()])
            .current_dir(root),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout)
        .map_err(|e| Failure(format!("{what}: stdout is not JSON ({e}):\n{stdout}")))
}

fn str_field<'a>(label: &str, report: &'a Value, field: &str) -> Result<&'a str> {
    match report.get(field).and_then(Value::as_str) {
        Some(s) => Ok(s),
        None => fail(format!(
            "{label}: report has no string field {field:?}: {report}"
        )),
    }
}

fn hex_field(label: &str, report: &Value, field: &str) -> Result<Vec<u8>> {
    let s = str_field(label, report, field)?;
    hex::decode(s).map_err(|e| Failure(format!("{label}: field {field:?} is not hex ({e}): {s}")))
}

/// Every entry of `checks` is `true`; names the ones that are not.
fn assert_checks_pass(label: &str, report: &Value) -> Result<()> {
    let Some(checks) = report.get("checks").and_then(Value::as_object) else {
        return fail(format!("{label}: report has no checks object: {report}"));
    };
    ensure(!checks.is_empty(), || {
        format!("{label}: report has an empty checks object")
    })?;
    let failed: Vec<&String> = checks
        .iter()
        .filter(|(_, v)| v.as_bool() != Some(true))
        .map(|(k, _)| k)
        .collect();
    ensure(failed.is_empty(), || {
        format!("{label}: checks not true: {failed:?}\nreport: {report}")
    })
}

/// Take out the `backend` field (the one value that legitimately differs) and return it.
fn take_backend(label: &str, report: &mut Value) -> Result<String> {
    let backend = report
        .as_object_mut()
        .and_then(|o| o.remove("backend"))
        .and_then(|v| v.as_str().map(str::to_owned));
    match backend {
        Some(b) => Ok(b),
        None => fail(format!("{label}: report has no backend field: {report}")),
    }
}

/// The wasm-made ticket signature, checked by the `blst` crate as an ordinary IETF BLS
/// (min-sig, POP ciphersuite) signature on the ticket message.
fn assert_blst_verifies(label: &str, report: &Value) -> Result<()> {
    use blst::BLST_ERROR;
    use blst::min_sig::{PublicKey, Signature};

    let keyset_id = KeysetId::from_hex(str_field(label, report, "keyset_id")?)
        .map_err(|e| Failure(format!("{label}: keyset_id: {e}")))?;
    let holder = HolderPublicKey::from_bytes(&hex_field(label, report, "holder_public_key")?)
        .map_err(|e| Failure(format!("{label}: holder_public_key: {e}")))?;
    let msg = ticket_message(&keyset_id, &holder);

    let pk = PublicKey::key_validate(&hex_field(label, report, "public_key")?)
        .map_err(|e| Failure(format!("{label}: blst refuses the public key: {e:?}")))?;
    let sig = Signature::sig_validate(&hex_field(label, report, "signature")?, true)
        .map_err(|e| Failure(format!("{label}: blst refuses the signature: {e:?}")))?;
    let result = sig.verify(true, &msg, BLS_DST, &[], &pk, true);
    ensure(result == BLST_ERROR::BLST_SUCCESS, || {
        format!("{label}: blst does not verify the signature made in wasm: {result:?}")
    })?;

    // And it is bound to the message: one flipped byte fails.
    let mut wrong = msg;
    if let Some(last) = wrong.last_mut() {
        *last ^= 1;
    }
    let result = sig.verify(true, &wrong, BLS_DST, &[], &pk, true);
    ensure(result != BLST_ERROR::BLST_SUCCESS, || {
        format!("{label}: blst accepts the signature for a different message")
    })
}

fn check_run(root: &Path, pkg: &Path, seed: u64, t: u32, n: u32) -> Result<()> {
    let label = format!("{t}-of-{n}, seed {seed}");
    let (wasm_label, native_label) = (format!("{label}, wasm"), format!("{label}, native"));

    let mut wasm = run_in_node(root, pkg, seed, t, n)?;
    assert_checks_pass(&wasm_label, &wasm)?;
    assert_blst_verifies(&wasm_label, &wasm)?;

    let mut native = ticketing_wasm_flow::flow_report(seed, t, n)
        .map_err(|e| Failure(format!("{native_label}: flow failed: {e}")))?;
    assert_checks_pass(&native_label, &native)?;

    let wasm_backend = take_backend(&wasm_label, &mut wasm)?;
    let native_backend = take_backend(&native_label, &mut native)?;
    ensure(
        wasm_backend.contains("portable") && native_backend.contains("native"),
        || {
            format!(
                "{label}: expected the pure-Rust backend in wasm and C blst natively, \
                 got wasm {wasm_backend:?}, native {native_backend:?}"
            )
        },
    )?;
    ensure(wasm == native, || {
        format!(
            "{label}: wasm ({wasm_backend}) and native ({native_backend}) reports differ in {:?}\n\
             wasm:   {wasm}\nnative: {native}",
            differing_fields(&wasm, &native)
        )
    })
}

/// Top-level fields whose values differ (or exist on one side only).
fn differing_fields(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["<not both objects>".to_owned()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[test]
fn crypto_flow_runs_in_wasm() -> Result<()> {
    let root = workspace_root()?;
    let pkg = build_selftest(&root)?;
    for (seed, t, n) in RUNS {
        check_run(&root, &pkg, seed, t, n)?;
    }
    Ok(())
}
