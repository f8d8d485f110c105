//! Each service's OpenAPI 3.1 description, built from its routes as they are added.
//!
//! A service adds its routes through [`Api::route`] and nowhere else ([`crate::finish`] takes
//! an [`Api`], not a router), so a route cannot exist without being described. The request
//! body, query parameters, credentials and response of an operation are read from the
//! handler's own signature ([`Described`]): a handler taking `Json<IssueRequest>` and
//! returning `Result<Json<IssueResponse>, ApiError>` is described with exactly those types,
//! whose JSON Schemas come from their serde definitions (schemars). Changing a handler
//! changes its description; nothing is written twice.

use std::collections::BTreeMap;
use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::{HeaderMap, Method};
use axum::routing::{MethodFilter, MethodRouter};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};
use ticketing_protocol::ErrorBody;

use crate::{ApiError, Json, Query};

/// One operation's description, as the handler's parts fill it in.
#[derive(Debug, Default)]
pub struct Operation {
    fields: Map<String, Value>,
    parameters: Vec<Value>,
    responses: Map<String, Value>,
    notes: Vec<String>,
}

impl Operation {
    /// The request body: JSON of `T`.
    pub fn body<T: JsonSchema>(&mut self, g: &mut SchemaGenerator) {
        self.fields.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": {
                "schema": g.subschema_for::<T>() } } }),
        );
    }

    /// Query parameters: the fields of `T`.
    pub fn query<T: JsonSchema>(&mut self, g: &mut SchemaGenerator) {
        let schema = T::json_schema(g);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, property) in properties {
            self.parameters.push(json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "description": property.get("description").cloned().unwrap_or_else(|| "".into()),
                "schema": property,
            }));
        }
    }

    /// A request header the operation reads.
    pub fn header(&mut self, name: &str, description: &str) {
        self.parameters.push(json!({
            "name": name, "in": "header", "required": false,
            "description": description, "schema": { "type": "string" },
        }));
    }

    /// A response of `status` with a JSON body of `T`.
    pub fn response<T: JsonSchema>(
        &mut self,
        g: &mut SchemaGenerator,
        status: &str,
        description: &str,
    ) {
        self.responses.insert(
            status.into(),
            json!({ "description": description, "content": { "application/json": {
                "schema": g.subschema_for::<T>() } } }),
        );
    }

    /// Another form the `status` response may take (negotiated with `Accept`), without a
    /// JSON Schema (bytes).
    pub fn also_content(&mut self, status: &str, content_type: &str) {
        if let Some(content) = self
            .responses
            .get_mut(status)
            .and_then(|r| r.get_mut("content"))
            .and_then(Value::as_object_mut)
        {
            content.insert(content_type.into(), json!({}));
        }
    }

    /// A response of `status` with a body of `content_type` (or none), described in words.
    pub fn response_other(&mut self, status: &str, content_type: Option<&str>, description: &str) {
        let response = match content_type {
            Some(t) => json!({ "description": description, "content": { t: {} } }),
            None => json!({ "description": description }),
        };
        self.responses.insert(status.into(), response);
    }

    /// The operation needs `Authorization: Bearer` with a token of the kind `who` says.
    pub fn bearer(&mut self, who: &str) {
        self.fields
            .insert("security".into(), json!([{ "bearer": [] }]));
        self.notes
            .push(format!("Needs `Authorization: Bearer` with {who}."));
    }

    fn into_value(mut self, summary: &str, path: &str) -> Value {
        // Path parameters come from the template itself (`/v1/receipts/{digest}`).
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            self.parameters.push(json!({
                "name": name, "in": "path", "required": true, "schema": { "type": "string" },
            }));
        }
        self.fields.insert("summary".into(), summary.into());
        if !self.notes.is_empty() {
            self.fields
                .insert("description".into(), self.notes.join(" ").into());
        }
        if !self.parameters.is_empty() {
            self.fields
                .insert("parameters".into(), Value::Array(self.parameters));
        }
        self.fields
            .insert("responses".into(), Value::Object(self.responses));
        Value::Object(self.fields)
    }
}

/// What a handler argument (an extractor) adds to its operation's description.
pub trait Input {
    /// Add to `op`; most extractors (state, headers) add nothing.
    fn describe(_op: &mut Operation, _g: &mut SchemaGenerator) {}
}

/// What a handler's return type adds: its responses.
pub trait Output {
    /// Add the responses to `op`.
    fn describe(op: &mut Operation, g: &mut SchemaGenerator);
}

impl<T: JsonSchema> Input for Json<T> {
    fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
        op.body::<T>(g);
    }
}

impl<T: JsonSchema> Input for Query<T> {
    fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
        op.query::<T>(g);
    }
}

impl<S> Input for State<S> {}
impl Input for HeaderMap {}
impl<T> Input for axum::extract::Path<T> {}
impl<T: Input, E> Input for Result<T, E> {
    fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
        T::describe(op, g);
    }
}

impl<T: JsonSchema> Output for Json<T> {
    fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
        op.response::<T>(g, "200", "OK");
    }
}

impl Output for ApiError {
    fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
        op.response::<ErrorBody>(
            g,
            "default",
            "A refusal: a stable `code` to match on and a `detail` for people. The status \
             follows the code (400 malformed, 401 unauthorized, 404 not_found, 409 for \
             conflicts, 429 rate_limited with `Retry-After`, 503 unavailable...).",
        );
    }
}

/// A response the handler builds itself says nothing: its route describes it
/// ([`Route::describe`]), or the document's test finds an operation without responses.
impl Output for axum::response::Response {
    fn describe(_op: &mut Operation, _g: &mut SchemaGenerator) {}
}

impl<T: Output, E: Output> Output for Result<T, E> {
    fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
        T::describe(op, g);
        E::describe(op, g);
    }
}

/// A handler whose arguments and return type describe their operation. Implemented for every
/// `async fn` of up to six [`Input`] arguments returning an [`Output`]; `M` only tells the
/// implementations apart (as axum's `Handler` does).
pub trait Described<M> {
    /// Describe the operation from the handler's types.
    fn describe(op: &mut Operation, g: &mut SchemaGenerator);
}

macro_rules! described {
    ($($arg:ident),*) => {
        impl<F, Fut, R, $($arg,)*> Described<(R, $($arg,)*)> for F
        where
            F: FnOnce($($arg,)*) -> Fut,
            Fut: Future<Output = R>,
            R: Output,
            $($arg: Input,)*
        {
            fn describe(op: &mut Operation, g: &mut SchemaGenerator) {
                $($arg::describe(op, g);)*
                R::describe(op, g);
            }
        }
    };
}

described!();
described!(A1);
described!(A1, A2);
described!(A1, A2, A3);
described!(A1, A2, A3, A4);
described!(A1, A2, A3, A4, A5);
described!(A1, A2, A3, A4, A5, A6);

type Describe = Box<dyn FnOnce(&mut Operation, &mut SchemaGenerator) + Send>;

/// One method on one path: the axum route and how to describe it.
pub struct Route<S> {
    method: Method,
    summary: &'static str,
    router: MethodRouter<S>,
    describe: Vec<Describe>,
}

impl<S> std::fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Route<S> {
    /// `GET`, described from `handler`'s types.
    pub fn get<H, T, M>(summary: &'static str, handler: H) -> Self
    where
        H: Handler<T, S> + Described<M>,
        T: 'static,
    {
        Self::on(Method::GET, MethodFilter::GET, summary, handler)
    }

    /// `POST`, described from `handler`'s types.
    pub fn post<H, T, M>(summary: &'static str, handler: H) -> Self
    where
        H: Handler<T, S> + Described<M>,
        T: 'static,
    {
        Self::on(Method::POST, MethodFilter::POST, summary, handler)
    }

    fn on<H, T, M>(method: Method, filter: MethodFilter, summary: &'static str, handler: H) -> Self
    where
        H: Handler<T, S> + Described<M>,
        T: 'static,
    {
        // A plain function pointer: it names none of the handler's types.
        let describe: fn(&mut Operation, &mut SchemaGenerator) = H::describe;
        Self {
            method,
            summary,
            router: axum::routing::on(filter, handler),
            describe: vec![Box::new(describe)],
        }
    }

    /// Wrap the route (a body limit, a middleware): the description is unchanged.
    pub fn map(mut self, f: impl FnOnce(MethodRouter<S>) -> MethodRouter<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// Say more than the types can (headers read, a response the handler builds itself).
    pub fn describe(
        mut self,
        f: impl FnOnce(&mut Operation, &mut SchemaGenerator) + Send + 'static,
    ) -> Self {
        self.describe.push(Box::new(f));
        self
    }
}

/// A service's routes and their OpenAPI description, built together.
pub struct Api<S = ()> {
    router: Router<S>,
    title: &'static str,
    paths: BTreeMap<&'static str, Map<String, Value>>,
    generator: SchemaGenerator,
}

impl<S> std::fmt::Debug for Api<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("title", &self.title)
            .field("paths", &self.paths.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Api<S> {
    /// No routes yet; `title` names the service in the document.
    pub fn new(title: &'static str) -> Self {
        let settings = SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        });
        Self {
            router: Router::new(),
            title,
            paths: BTreeMap::new(),
            generator: settings.into_generator(),
        }
    }

    /// Add `route` at `path` (axum's template syntax, `{name}` for a parameter).
    pub fn route(mut self, path: &'static str, route: Route<S>) -> Self {
        let mut op = Operation::default();
        for describe in route.describe {
            describe(&mut op, &mut self.generator);
        }
        let method = route.method.as_str().to_ascii_lowercase();
        self.paths
            .entry(path)
            .or_default()
            .insert(method, op.into_value(route.summary, path));
        self.router = self.router.route(path, route.router);
        self
    }

    /// Give the routes their state.
    pub fn with_state<S2>(self, state: S) -> Api<S2> {
        Api {
            router: self.router.with_state(state),
            title: self.title,
            paths: self.paths,
            generator: self.generator,
        }
    }

    /// The routes and the OpenAPI document describing them.
    pub fn into_parts(mut self) -> (Router<S>, Value) {
        let paths: Map<String, Value> = std::mem::take(&mut self.paths)
            .into_iter()
            .map(|(path, ops)| (path.to_owned(), Value::Object(ops)))
            .collect();
        let schemas = self.generator.take_definitions(true);
        let doc = json!({
            "openapi": "3.1.0",
            "info": {
                "title": self.title,
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Every answer that is not a success is an ErrorBody with a \
                    stable code. Requests are limited per client address; over the limit the \
                    answer is 429 `rate_limited` with `Retry-After`.",
            },
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            },
        });
        (self.router, doc)
    }
}
