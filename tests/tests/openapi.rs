//! Every service's `/openapi.json` against the service itself: every operation it lists is
//! called and answers (never the fallback's 404), every answer matches the schema documented
//! for its status, every path the clients call is documented, and the document is whole
//! (every `$ref` resolves, every operation has a response).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use ticketing_coordinator::TokenRole;
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::HolderSecret;
use ticketing_protocol::Id16;
use ticketing_protocol::issue::IssueRequest;
use ticketing_protocol::publication::BloomSnapshot;
use ticketing_protocol::receipt::blinded_digest;

use crate::common::{Db, buy, card, start, token};

/// One service's document and the operations the test has called on it.
struct Described {
    base: String,
    doc: Value,
    called: BTreeSet<(String, String)>,
    http: reqwest::Client,
}

impl Described {
    async fn fetch(base: &str) -> Self {
        let http = reqwest::Client::new();
        let doc: Value = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "{doc}");
        check_whole(&doc);
        Self {
            base: base.to_owned(),
            doc,
            called: BTreeSet::new(),
            http,
        }
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, methods) in self.doc["paths"].as_object().unwrap() {
            for method in methods.as_object().unwrap().keys() {
                ops.insert((method.clone(), path.clone()));
            }
        }
        ops
    }

    /// Call `method template` (with `path` filling its parameters), check the answer against
    /// the documented response for its status, and return its status and JSON body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let op = self.doc["paths"][template][method].clone();
        assert!(op.is_object(), "{method} {template} is not documented");
        self.called.insert((method.to_owned(), template.to_owned()));
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "get" => self.http.get(url),
            "post" => self.http.post(url),
            other => panic!("no method {other}"),
        };
        if let Some(t) = bearer {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.unwrap();
        let documented = &op["responses"][status.to_string()];
        let documented = if documented.is_object() {
            documented
        } else {
            &op["responses"]["default"]
        };
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which is not documented: {text}"
        );
        let value = if content_type.starts_with("application/json") {
            serde_json::from_str(&text).unwrap()
        } else {
            Value::Null
        };
        match documented["content"].as_object() {
            Some(content) => {
                let (_, media) = content
                    .iter()
                    .find(|(t, _)| content_type.starts_with(t.as_str()))
                    .unwrap_or_else(|| {
                        panic!("{method} {path}: {content_type} is not among {content:?}")
                    });
                if let Some(schema) = media.get("schema") {
                    let mut errors = Vec::new();
                    validate(&self.doc, schema, &value, "$", &mut errors);
                    assert!(
                        errors.is_empty(),
                        "{method} {path} ({status}) does not match its schema: {errors:?}\n{value}"
                    );
                }
            }
            None => assert!(text.is_empty(), "{method} {path}: undocumented body {text}"),
        }
        // The fallback answers every path it does not know this way; a documented one never.
        assert!(
            !(status == 404 && value["detail"] == "no such endpoint") && status != 405,
            "{method} {path} is documented but not served"
        );
        (status, value)
    }

    fn all_called(&self) {
        let missing: Vec<_> = self
            .operations()
            .difference(&self.called)
            .cloned()
            .collect();
        assert!(
            missing.is_empty(),
            "{}: not exercised {missing:?}",
            self.base
        );
    }
}

/// Every `$ref` points at a schema of the document; every operation has a response.
fn check_whole(doc: &Value) {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling {r}"
        );
    }
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path} has no response");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            // A JSON answer documented as "anything" would document nothing.
            for (status, response) in responses {
                if let Some(schema) = response.pointer("/content/application~1json/schema") {
                    assert!(
                        schema != &json!(true) && schema != &json!({}),
                        "{method} {path} {status}: any JSON"
                    );
                }
            }
        }
    }
}

/// A JSON Schema validator for what schemars writes. Strict on purpose: a keyword it does not
/// know is an error, so no part of a schema is silently not checked.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errors.push(format!("{at}: nothing is allowed")),
        Value::Object(s) => s,
        other => return errors.push(format!("{at}: bad schema {other}")),
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$ref" => {
                let name = rule
                    .as_str()
                    .unwrap()
                    .trim_start_matches("#/components/schemas/");
                validate(doc, &doc["components"]["schemas"][name], v, at, errors);
            }
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                let fits = |t: &str| match t {
                    "null" => v.is_null(),
                    "boolean" => v.is_boolean(),
                    "object" => v.is_object(),
                    "array" => v.is_array(),
                    "string" => v.is_string(),
                    "number" => v.is_number(),
                    "integer" => v.is_i64() || v.is_u64(),
                    _ => false,
                };
                if !types.iter().any(|t| fits(t)) {
                    errors.push(format!("{at}: {v} is not {rule}"));
                }
            }
            "properties" => {
                if let Some(object) = v.as_object() {
                    for (name, s) in rule.as_object().unwrap() {
                        if let Some(field) = object.get(name) {
                            validate(doc, s, field, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "required" => {
                if let Some(object) = v.as_object() {
                    for name in rule.as_array().unwrap() {
                        if !object.contains_key(name.as_str().unwrap()) {
                            errors.push(format!("{at}: {name} is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = v.as_object() {
                    let known = schema.get("properties").and_then(Value::as_object);
                    for (name, field) in object {
                        if known.is_none_or(|k| !k.contains_key(name)) {
                            validate(doc, rule, field, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = v.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        validate(doc, rule, item, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            "enum" => {
                if !rule.as_array().unwrap().contains(v) {
                    errors.push(format!("{at}: {v} is not one of {rule}"));
                }
            }
            "const" => {
                if rule != v {
                    errors.push(format!("{at}: {v} is not {rule}"));
                }
            }
            "oneOf" | "anyOf" => {
                let fitting = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| {
                        let mut e = Vec::new();
                        validate(doc, s, v, at, &mut e);
                        e.is_empty()
                    })
                    .count();
                let ok = if keyword == "oneOf" {
                    fitting == 1
                } else {
                    fitting >= 1
                };
                if !ok {
                    errors.push(format!("{at}: {v} fits {fitting} of the {keyword} schemas"));
                }
            }
            "allOf" => {
                for s in rule.as_array().unwrap() {
                    validate(doc, s, v, at, errors);
                }
            }
            "pattern" => {
                if let Some(s) = v.as_str() {
                    let re = regex::Regex::new(rule.as_str().unwrap()).unwrap();
                    if !re.is_match(s) {
                        errors.push(format!("{at}: {s:?} does not match {rule}"));
                    }
                }
            }
            "minimum" => {
                if let (Some(x), Some(min)) = (v.as_f64(), rule.as_f64())
                    && x < min
                {
                    errors.push(format!("{at}: {x} < {min}"));
                }
            }
            "maximum" => {
                if let (Some(x), Some(max)) = (v.as_f64(), rule.as_f64())
                    && x > max
                {
                    errors.push(format!("{at}: {x} > {max}"));
                }
            }
            "minItems" | "maxItems" => {
                if let (Some(a), Some(n)) = (v.as_array(), rule.as_u64()) {
                    let len = a.len() as u64;
                    if (keyword == "minItems" && len < n) || (keyword == "maxItems" && len > n) {
                        errors.push(format!("{at}: {len} items, {keyword} {n}"));
                    }
                }
            }
            // Annotations: they say what a value means, not what it may be.
            "description" | "title" | "format" | "default" | "examples" | "$schema" => {}
            other => errors.push(format!("{at}: the test does not know the keyword {other}")),
        }
    }
}

/// Every `/v1/...` path the clients, the CLI and the auditor write in their code.
fn paths_the_clients_call() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let re = regex::Regex::new(r#"(?:"|\})(/v1/[a-z_/{}]*[a-z_}])"#).unwrap();
    let mut found = BTreeSet::new();
    for dir in [
        "client/src",
        "cli/src",
        "audit/src",
        "validator/src",
        "wallet/src",
    ] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    for line in std::fs::read_to_string(&p).unwrap().lines() {
                        if line.trim_start().starts_with("//") {
                            continue;
                        }
                        for c in re.captures_iter(line) {
                            found.insert(c[1].to_owned());
                        }
                    }
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_is_described_and_answers_as_described() {
    let c = start(Db::Sqlite, 3, 2).await.unwrap();
    let manifest = c.cluster.cluster.manifest.clone();
    let coordinator_url = c.cluster.coordinator.as_ref().unwrap().url.clone();
    let mut node = Described::fetch(&manifest.nodes[0].url).await;
    let mut payments = Described::fetch(&manifest.payments.url).await;
    let mut coordinator = Described::fetch(&coordinator_url).await;
    // The nodes run one build: the same document each.
    for other in &manifest.nodes[1..] {
        assert_eq!(Described::fetch(&other.url).await.doc, node.doc);
    }

    // Payments and a node, with a real purchase's points.
    let client = c.client();
    let holders: Vec<_> = (0..2)
        .map(|_| HolderSecret::generate(&mut rand::rng()).public_key())
        .collect();
    let prepared = client
        .prepare("day", &holders, ticketing_service::now(), &mut rand::rng())
        .unwrap();
    let digest = blinded_digest(&prepared.blinded);
    let checkout = json!({
        "product": "day",
        "keyset_id": prepared.keyset_id,
        "count": 2,
        "digest": digest,
        "payment": card(),
    });
    let (status, receipt) = payments
        .call("post", "/v1/checkout", "/v1/checkout", None, Some(checkout))
        .await;
    assert_eq!(status, 200, "{receipt}");
    let (status, _) = payments
        .call(
            "post",
            "/v1/checkout",
            "/v1/checkout",
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400);
    let receipt_path = format!("/v1/receipts/{digest}");
    let (status, again) = payments
        .call("get", "/v1/receipts/{digest}", &receipt_path, None, None)
        .await;
    assert_eq!((status, &again), (200, &receipt));
    let (status, _) = payments
        .call(
            "get",
            "/v1/receipts/{digest}",
            &format!("/v1/receipts/{}", "0".repeat(64)),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);
    payments
        .call("get", "/v1/audit/totals", "/v1/audit/totals", None, None)
        .await;

    let issue = serde_json::to_value(IssueRequest {
        receipt: serde_json::from_value(receipt).unwrap(),
        blinded: prepared.blinded.clone(),
    })
    .unwrap();
    let (status, answer) = node
        .call("post", "/v1/issue", "/v1/issue", None, Some(issue))
        .await;
    assert_eq!(status, 200, "{answer}");
    node.call("get", "/v1/info", "/v1/info", None, None).await;
    let (_, page) = node
        .call("get", "/v1/log", "/v1/log?after=0&limit=10", None, None)
        .await;
    assert!(!page["entries"].as_array().unwrap().is_empty(), "{page}");
    node.call(
        "get",
        "/v1/log/checkpoints",
        "/v1/log/checkpoints",
        None,
        None,
    )
    .await;

    // The coordinator, with a bought ticket and every kind of token.
    let settings = &c.cluster.settings;
    let admin = token(&c, "ops", TokenRole::Admin).await;
    let auditor = token(&c, "books", TokenRole::Auditor).await;
    let gate = token(&c, "gate-1", TokenRole::Validator).await;
    let partner = ticketing_coordinator::partner::add_partner(
        settings,
        "metro",
        &["single".to_owned()],
        None,
    )
    .await
    .unwrap();
    let tickets = buy(&c, "single", 3).await;
    let now = ticketing_service::now();
    let shown = |i: usize| {
        let epoch = epoch_at(now, manifest.rotation_seconds);
        Presentation::sign(&tickets[i].0, &tickets[i].1, epoch).to_text()
    };
    let scan = |i: usize| json!({ "scan_id": Id16::random(&mut rand::rng()), "payload": shown(i), "scanned_at": now });
    let co = &mut coordinator;
    co.call("get", "/v1/manifest", "/v1/manifest", None, None)
        .await;
    let (status, verdict) = co
        .call(
            "post",
            "/v1/redeem",
            "/v1/redeem",
            Some(&gate),
            Some(scan(0)),
        )
        .await;
    assert_eq!(
        (status, &verdict["verdict"]),
        (200, &json!("accepted")),
        "{verdict}"
    );
    let (status, _) = co
        .call("post", "/v1/redeem", "/v1/redeem", None, Some(scan(0)))
        .await;
    assert_eq!(status, 401);
    let batch = json!({ "scans": [scan(0), scan(1)] });
    let (status, _) = co
        .call(
            "post",
            "/v1/redeem/batch",
            "/v1/redeem/batch",
            Some(&gate),
            Some(batch),
        )
        .await;
    assert_eq!(status, 200);
    let sync = json!({ "scans": [scan(2)] });
    let (status, _) = co
        .call("post", "/v1/sync", "/v1/sync", Some(&gate), Some(sync))
        .await;
    assert_eq!(status, 200);
    let revoke = json!({ "keyset_id": tickets[2].0.keyset_id, "serial": tickets[2].0.serial() });
    let (status, _) = co
        .call(
            "post",
            "/v1/admin/revoke",
            "/v1/admin/revoke",
            Some(&admin),
            Some(revoke),
        )
        .await;
    assert_eq!(status, 200);
    let (status, deny) = co
        .call(
            "get",
            "/v1/admin/deny",
            "/v1/admin/deny",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(!deny.as_array().unwrap().is_empty(), "{deny}");
    let (status, _) = co
        .call(
            "post",
            "/v1/admin/bloom/rebuild",
            "/v1/admin/bloom/rebuild",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, json_form) = co.call("get", "/v1/bloom", "/v1/bloom", None, None).await;
    assert_eq!(status, 200);
    // The binary form, as validators ask for it, is documented and is the same snapshot.
    let answer = reqwest::Client::new()
        .get(format!("{coordinator_url}/v1/bloom"))
        .header("accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        co.doc["paths"]["/v1/bloom"]["get"]["responses"]["200"]["content"][&content_type]
            .is_object(),
        "{content_type} is not documented"
    );
    let binary = BloomSnapshot::from_bytes(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&binary).unwrap(), json_form);
    for t in [&admin, &auditor] {
        let (status, _) = co
            .call("get", "/v1/admin/stats", "/v1/admin/stats", Some(t), None)
            .await;
        assert_eq!(status, 200);
        let (status, actions) = co
            .call(
                "get",
                "/v1/admin/actions",
                "/v1/admin/actions?after=0",
                Some(t),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            !actions["actions"].as_array().unwrap().is_empty(),
            "{actions}"
        );
    }
    let (status, _) = co
        .call(
            "get",
            "/v1/partner/feed",
            "/v1/partner/feed?after=0",
            Some(partner.token.expose()),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // What every service serves for its operators.
    for service in [&mut node, &mut payments, &mut coordinator] {
        let (status, _) = service.call("get", "/health", "/health", None, None).await;
        assert_eq!(status, 200);
        service
            .call("get", "/metrics", "/metrics", None, None)
            .await;
        service
            .call("get", "/openapi.json", "/openapi.json", None, None)
            .await;
        // And an unknown path is the fallback's, so the check above can fail.
        let r = reqwest::get(format!("{}/v1/nothing-here", service.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        service.all_called();
    }

    let documented: BTreeSet<String> = [&node, &payments, &coordinator]
        .iter()
        .flat_map(|s| s.operations().into_iter().map(|(_, path)| path))
        .collect();
    let called = paths_the_clients_call();
    assert!(called.len() >= 10, "the scan found too little: {called:?}");
    let undocumented: Vec<_> = called.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "clients call undocumented paths: {undocumented:?}"
    );
}
