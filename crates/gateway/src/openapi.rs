//! The OpenAPI document of the HTTP API, generated from the contracts:
//! each public RPC's `(google.api.http)` binding makes an operation, its
//! `(tenx.options.v1.route)` the operation id and headers, its request
//! and response messages the schemas (in the JSON of [`crate::json`]),
//! and the proto comments the descriptions. Nothing in it is written per
//! route, so the document and the router cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use tenx_proto::edge::{Http, PublicRpc};
use tenx_proto::rules::{FieldRules, Path, Violations};

use crate::json::{enum_name, name_of, textual};
use crate::transcode::{method, pool, read_scope};

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| build().to_string())
}

/// The leading comment of the element at `path` in `message`'s file.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let text = info.location.iter().find(|l| l.path == path)?.leading_comments.as_deref()?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let joined = lines.join("\n").trim().to_owned();
    (!joined.is_empty()).then_some(joined)
}

fn field_comment(field: &FieldDescriptor) -> Option<String> {
    comment(&field.parent_file(), field.path())
}

/// Component schemas, by name; a message read in requests gets its own
/// `…Input` variant (nothing required), since responses always carry
/// every field and requests may leave any out.
struct Schemas {
    out: BTreeMap<String, Value>,
    pending: Vec<(MessageDescriptor, bool)>,
    seen: BTreeSet<(String, bool)>,
}

impl Schemas {
    fn name(desc: &MessageDescriptor, input: bool) -> String {
        // `tenx.billing.v1.Invoice` → `Invoice`; the package keeps names
        // unique across services only when needed.
        let short = desc.name().to_owned();
        let clash = pool().all_messages().any(|m| m.name() == short && m.full_name() != desc.full_name());
        let base = if clash { desc.full_name().replace('.', "_") } else { short };
        if input { format!("{base}Input") } else { base }
    }

    fn reference(&mut self, desc: &MessageDescriptor, input: bool) -> Value {
        let name = Self::name(desc, input);
        if self.seen.insert((desc.full_name().to_owned(), input)) {
            self.pending.push((desc.clone(), input));
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn drain(&mut self) {
        while let Some((desc, input)) = self.pending.pop() {
            let schema = self.object(&desc, input, &[]);
            self.out.insert(Self::name(&desc, input), schema);
        }
    }

    /// The object schema of a message, leaving out `skip` (fields the
    /// path fills).
    fn object(&mut self, desc: &MessageDescriptor, input: bool, skip: &[&str]) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in desc.fields().filter(|f| !skip.contains(&f.name())) {
            let name = name_of(&field).to_owned();
            let mut schema = self.field(&field, input);
            // An answer carries every field; a request the ones its rules
            // require, and may send null for any other (proto3 JSON: the
            // field's default).
            if !input || must_be_sent(&field) {
                required.push(Value::String(name.clone()));
            } else {
                schema = nullable(schema);
            }
            properties.insert(name, schema);
        }
        let mut schema = json!({ "type": "object", "additionalProperties": false, "properties": properties });
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        if let Some(text) = comment(&desc.parent_file(), desc.path()) {
            schema["description"] = Value::String(text);
        }
        schema
    }

    fn field(&mut self, field: &FieldDescriptor, input: bool) -> Value {
        let kind = field.kind();
        let mut schema = if field.is_map() {
            let value = match &kind {
                Kind::Message(entry) => self.kind(&entry.map_entry_value_field().kind(), input),
                _ => json!({}),
            };
            json!({ "type": "object", "additionalProperties": value })
        } else if field.is_list() {
            let mut items = self.kind(&kind, input);
            let rules = if input { rules_of(field) } else { None };
            if let Some(each) = rules.and_then(|r| r.items) {
                constrain(&mut items, each);
            }
            let mut schema = json!({ "type": "array", "items": items });
            if let Some(rules) = rules {
                constrain(&mut schema, rules);
            }
            schema
        } else {
            let mut schema = self.kind(&kind, input);
            let rules = if input { rules_of(field) } else { None };
            if let Some(rules) = rules {
                constrain(&mut schema, rules);
            }
            // Null: an unset message or optional scalar, an unspecified
            // enum — unless the contract requires a value.
            let nullable = (matches!(kind, Kind::Message(_) | Kind::Enum(_)) || field.supports_presence())
                && !(rules.is_some() && must_be_sent(field));
            if nullable { self::nullable(schema) } else { schema }
        };
        if let Some(text) = field_comment(field) {
            schema["description"] = Value::String(text);
        }
        schema
    }

    fn kind(&mut self, kind: &Kind, input: bool) -> Value {
        match kind {
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "integer", "format": "int64" }),
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "integer", "minimum": 0 }),
            Kind::Float | Kind::Double => json!({ "type": "number" }),
            Kind::Enum(desc) => {
                let names: Vec<Value> =
                    desc.values().filter_map(|v| enum_name(desc, v.number())).map(Value::String).collect();
                json!({ "type": "string", "enum": names })
            }
            Kind::Message(desc) if desc.full_name() == "google.protobuf.Timestamp" => {
                json!({ "type": "string", "format": "date-time" })
            }
            Kind::Message(desc) => self.reference(desc, input),
        }
    }
}

/// `schema`, admitting null too.
fn nullable(mut schema: Value) -> Value {
    if schema.get("nullable").is_some() {
        return schema;
    }
    if schema.get("$ref").is_some() {
        return json!({ "allOf": [schema], "nullable": true });
    }
    schema["nullable"] = Value::Bool(true);
    // OpenAPI 3.0: an enum admits null only if listed.
    if let Some(names) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        names.push(Value::Null);
    }
    schema
}

/// The contract's `buf.validate` rules of a field (`tenx_proto::rules`).
fn rules_of(field: &FieldDescriptor) -> Option<&'static FieldRules> {
    tenx_proto::rules::field_rules(field.parent_message().full_name(), field.name())
}

/// Whether a request must carry the field: its zero value (what leaving
/// it out or sending null means) breaks one of its rules.
fn must_be_sent(field: &FieldDescriptor) -> bool {
    let Some(rules) = rules_of(field) else { return false };
    let (mut broken, at) = (Violations::default(), Path::ROOT);
    if field.is_list() {
        rules.list(&mut broken, &at, 0);
    } else {
        match field.kind() {
            Kind::String => rules.text(&mut broken, &at, ""),
            Kind::Bytes => rules.bytes(&mut broken, &at, &[]),
            Kind::Enum(e) => {
                let defined: Vec<i32> = e.values().map(|v| v.number()).collect();
                rules.enumeration(&mut broken, &at, 0, &defined);
            }
            Kind::Message(_) => rules.present(&mut broken, &at, false),
            _ if field.supports_presence() => rules.number(&mut broken, &at, None),
            _ => rules.number(&mut broken, &at, Some(0)),
        }
    }
    !broken.0.is_empty()
}

/// A UUID as `string.uuid` checks it (8-4-4-4-12 hex digits).
const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Writes a field's rules into its schema as the JSON Schema keywords that
/// mean the same (lengths in characters, ECMA-262 patterns, ranges, item
/// counts), so what the document admits is what the services admit.
fn constrain(schema: &mut Value, rules: &FieldRules) {
    let pattern = match (rules.uuid, &rules.pattern) {
        (true, Some(_)) => panic!("a field declares both string.uuid and string.pattern"),
        (true, None) => Some(UUID_PATTERN),
        (false, p) => p.as_ref().map(|p| p.source),
    };
    if rules.ignore_empty {
        // Empty means unset: only the pattern can say "empty, or …".
        assert!(
            rules.min_len.is_none() && rules.one_of.is_empty(),
            "IGNORE_IF_ZERO_VALUE is only written for patterns and maxima"
        );
        if let Some(p) = pattern {
            schema["pattern"] = json!(format!("^$|{p}"));
        }
    } else if let Some(p) = pattern {
        schema["pattern"] = json!(p);
    }
    let min_len = if rules.required { Some(rules.min_len.unwrap_or(1).max(1)) } else { rules.min_len };
    if schema["type"] == "string" {
        if let Some(n) = min_len.filter(|n| *n > 0) {
            schema["minLength"] = json!(n);
        }
        if let Some(n) = rules.max_len {
            schema["maxLength"] = json!(n);
        }
        if !rules.one_of.is_empty() {
            schema["enum"] = json!(rules.one_of);
        }
    }
    if schema["type"] == "integer" {
        if let Some(n) = rules.min.or(rules.required.then_some(1)) {
            schema["minimum"] = json!(n);
        }
        if let Some(n) = rules.max {
            schema["maximum"] = json!(n);
        }
    }
    if schema["type"] == "array" {
        if let Some(n) = rules.min_items {
            schema["minItems"] = json!(n);
        }
        if let Some(n) = rules.max_items {
            schema["maxItems"] = json!(n);
        }
    }
}

fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

fn operation(schemas: &mut Schemas, route: &PublicRpc, http: &Http) -> Value {
    let method = method(route.path).unwrap_or_else(|| panic!("{} has descriptors", route.path));
    let (input, output) = (method.input(), method.output());
    let description = comment(&method.parent_file(), method.path()).unwrap_or_default();
    let summary = description.split(['.', '\n']).next().unwrap_or_default().trim().to_owned();

    let in_path: Vec<&str> = path_fields(http.path);
    let mut parameters: Vec<Value> = in_path
        .iter()
        .map(|name| {
            let field = input.get_field_by_name(name);
            let mut schema = json!({ "type": "string" });
            if let Some(rules) = field.as_ref().and_then(rules_of) {
                constrain(&mut schema, rules);
            }
            let mut p = json!({ "name": name, "in": "path", "required": true, "schema": schema });
            if let Some(text) = field.as_ref().and_then(field_comment) {
                p["description"] = Value::String(text);
            }
            p
        })
        .collect();
    if http.body.is_empty() {
        for field in input.fields().filter(|f| textual(f) && !in_path.contains(&f.name())) {
            let mut p = json!({
                "name": name_of(&field),
                "in": "query",
                "required": must_be_sent(&field),
                "schema": schemas.field(&field, true),
            });
            if field.is_list() {
                p["style"] = json!("form");
                p["explode"] = json!(false);
            }
            parameters.push(p);
        }
    }
    if route.idempotency_key {
        parameters.push(json!({ "$ref": "#/components/parameters/IdempotencyKey" }));
    }
    if !http.response_body.is_empty() {
        parameters.push(json!({
            "name": "If-None-Match",
            "in": "header",
            "required": false,
            "description": "The `ETag` of a copy the client holds: `304 Not Modified` without the bytes if it is current.",
            "schema": { "type": "string" },
        }));
    }
    if read_scope(route, http).is_some() {
        parameters.push(json!({ "$ref": "#/components/parameters/WalPosition" }));
    }
    // Content-Type is the body's media type, never a parameter (OpenAPI).
    for (header, field) in http.headers.iter().filter(|(h, _)| *h != "content-type") {
        let mut p =
            json!({ "name": header, "in": "header", "required": false, "schema": { "type": "string" } });
        if let Some(text) = input.get_field_by_name(field).as_ref().and_then(field_comment) {
            p["description"] = Value::String(text);
        }
        parameters.push(p);
    }

    let mut op = json!({
        "operationId": route.operation_id,
        "summary": summary,
        "description": description,
        "tags": [route.service],
        "parameters": parameters,
    });
    if route.anonymous {
        op["security"] = json!([]);
    }
    match http.body {
        "" => {}
        "*" => {
            let schema = schemas.object(&input, true, &in_path);
            // A body with a field the contract requires cannot be left out.
            let required = schema.get("required").is_some();
            op["requestBody"] =
                json!({ "required": required, "content": { "application/json": { "schema": schema } } });
        }
        name => {
            let field = input.get_field_by_name(name).unwrap_or_else(|| panic!("{name} is a field"));
            op["requestBody"] = match field.kind() {
                // The raw body, as sent (an image, a signed webhook), of
                // the media types the field its Content-Type fills admits.
                Kind::Bytes => {
                    let mut schema = json!({ "type": "string", "format": "binary" });
                    if rules_of(&field).is_some_and(|r| r.required) {
                        schema["minLength"] = json!(1);
                    }
                    let types: Vec<&str> = http
                        .headers
                        .iter()
                        .find(|(h, _)| *h == "content-type")
                        .and_then(|(_, f)| input.get_field_by_name(f))
                        .and_then(|f| rules_of(&f))
                        .map(|r| r.one_of.to_vec())
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| vec!["application/octet-stream"]);
                    let content: Map<String, Value> = types
                        .into_iter()
                        .map(|t| (t.to_owned(), json!({ "schema": schema.clone() })))
                        .collect();
                    json!({
                        "required": true,
                        "description": field_comment(&field).unwrap_or_default(),
                        "content": content,
                    })
                }
                _ => json!({
                    "required": false,
                    "content": { "application/json": { "schema": schemas.field(&field, true) } },
                }),
            };
        }
    }

    let mut headers = Map::new();
    for (name, component) in [
        ("x-request-id", "RequestId"),
        ("RateLimit-Limit", "RateLimitLimit"),
        ("RateLimit-Remaining", "RateLimitRemaining"),
    ] {
        headers.insert(name.to_owned(), header_ref(component));
    }
    if route.idempotency_key {
        headers.insert("Idempotent-Replayed".into(), header_ref("IdempotentReplayed"));
    }
    if !http.cache_control.is_empty() {
        headers.insert("Cache-Control".into(), header_ref("CacheControl"));
    }
    let mut revalidated = None;
    let (status, success) = if !http.response_body.is_empty() {
        headers.insert("ETag".into(), header_ref("ETag"));
        let mut content = Map::new();
        content.insert(
            http.media_type.to_owned(),
            json!({ "schema": { "type": "string", "format": "binary" } }),
        );
        revalidated = Some(json!({
            "description": "Not modified: `If-None-Match` named the current `ETag`; no body.",
            "headers": headers.clone(),
        }));
        ("200", json!({ "description": "The bytes themselves", "headers": headers, "content": content }))
    } else if output.fields().len() == 0 {
        ("204", json!({ "description": "Done (no content)", "headers": headers }))
    } else {
        let schema = schemas.reference(&output, false);
        let status = if http.creates { "201" } else { "200" };
        let description = if http.creates { "Created" } else { "OK" };
        (
            status,
            json!({ "description": description, "headers": headers, "content": { "application/json": { "schema": schema } } }),
        )
    };
    op["responses"] = json!({ status: success, "default": { "$ref": "#/components/responses/Error" } });
    if let Some(not_modified) = revalidated {
        op["responses"]["304"] = not_modified;
    }
    op
}

fn path_fields(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

fn build() -> Value {
    let mut schemas = Schemas { out: BTreeMap::new(), pending: Vec::new(), seen: BTreeSet::new() };
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (route, http) in tenx_proto::edge::http() {
        let op = operation(&mut schemas, route, http);
        paths.entry(http.path.to_owned()).or_default().insert(http.method.to_ascii_lowercase(), op);
    }
    schemas.drain();
    let mut components = fixed_components();
    for (name, schema) in schemas.out {
        components["schemas"][name] = schema;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tenx public API",
            "version": "1.0.0",
            "description": INTRO,
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": components,
    })
}

const INTRO: &str = "The HTTP/JSON API of the tenx gateway, generated from the gRPC contracts \
(each operation is the public RPC of the same name; `proto/` has every comment). Every error has \
the shape `{\"error\": {\"code\", \"message\", \"details\"}}`; `code` is the gRPC code's name \
(`invalid_argument` → 400, `unauthenticated` → 401, `permission_denied` → 403, `not_found` → 404, \
`already_exists`/`failed_precondition`/`aborted` → 409, `payload_too_large` → 413, \
`resource_exhausted` → 429 with `Retry-After`, `unavailable` → 503, `deadline_exceeded` → 504). \
Anonymous routes are rate-limited per client IP, the others per user or API key; responses carry \
`RateLimit-Limit` and `RateLimit-Remaining`. Send `x-request-id` to correlate (one is generated \
otherwise) and W3C `traceparent` to join a trace. Mutations that declare it need an \
`Idempotency-Key` header. JSON uses the proto field names; every field is written (unset messages, \
optional scalars and unspecified enums as null); enums are lower case without their prefix \
(`past_due`); money is integers in minor units with an ISO 4217 `currency`; times are RFC 3339. \
The signing keys are at `/.well-known/jwks.json`. Writes answer with `x-tenx-wal-position` \
(billing's tagged `billing:`); send the latest one of a service back on reads of that service to \
read your writes from any gateway instance.";

/// The parts of the document that are the gateway's own (the error
/// shape, its headers, the bearer scheme), the same for every operation.
fn fixed_components() -> Value {
    let codes = crate::error::EdgeError::code_names();
    json!({
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An access token (JWT from signup/login/refresh) or an API key (`tenx_sk_…`).",
            }
        },
        "parameters": {
            "WalPosition": {
                "name": "x-tenx-wal-position",
                "in": "header",
                "required": false,
                "description": "A write position returned by an earlier write, e.g. `16/B374D848` (billing's `billing:16/B374D848`); a value this gateway did not write is ignored.",
                "schema": { "type": "string" },
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": true,
                "description": "Any unique string (1–255 printable ASCII), e.g. a UUID. The service stores the first answer for 24 h: the same key with the same request returns it again (`Idempotent-Replayed: true`), with another request 409 `failed_precondition` (reason `IDEMPOTENCY_KEY_REUSED`), while the first is still running 409 `aborted` with `Retry-After`. Missing: 400 without calling the service.",
                "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$" },
            },
        },
        "headers": {
            "RequestId": {
                "description": "The request id (the client's `x-request-id`, or a new one).",
                "schema": { "type": "string" },
            },
            "RateLimitLimit": { "description": "Requests allowed per window.", "schema": { "type": "integer" } },
            "ETag": {
                "description": "A strong validator of the bytes (a hash of them): send it back as `If-None-Match`.",
                "schema": { "type": "string" },
            },
            "CacheControl": {
                "description": "How long any cache may keep the answer (the route's own, from its contract).",
                "schema": { "type": "string" },
            },
            "RateLimitRemaining": { "description": "Requests left in the window.", "schema": { "type": "integer" } },
            "IdempotentReplayed": {
                "description": "`true` when this is the stored answer of an earlier request with the same `Idempotency-Key`.",
                "schema": { "type": "string", "enum": ["true"] },
            },
        },
        "responses": {
            "Error": {
                "description": "An error, in the one shape of this API.",
                "headers": {
                    "x-request-id": { "$ref": "#/components/headers/RequestId" },
                    "Retry-After": {
                        "description": "Seconds to wait (429, 503, and 409 `aborted`: a concurrent request holds the same idempotency key).",
                        "schema": { "type": "integer" },
                    },
                },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "additionalProperties": false,
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message", "details"],
                        "additionalProperties": false,
                        "properties": {
                            "code": { "type": "string", "enum": codes },
                            "message": { "type": "string" },
                            "details": {
                                "type": "array",
                                "description": "Field violations (`field`, `description`) and machine-readable reasons (`reason`, `domain`; e.g. billing's `CURRENCY_MISMATCH`, `IDEMPOTENCY_KEY_REUSED`).",
                                "items": {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "required": ["field", "description"],
                                            "additionalProperties": false,
                                            "properties": {
                                                "field": { "type": "string", "description": "The request field, query parameter or header (e.g. `Idempotency-Key`)." },
                                                "description": { "type": "string" },
                                            },
                                        },
                                        {
                                            "type": "object",
                                            "required": ["reason", "domain"],
                                            "additionalProperties": false,
                                            "properties": {
                                                "reason": { "type": "string", "description": "Upper snake case, e.g. `CURRENCY_MISMATCH`." },
                                                "domain": { "type": "string", "description": "Who defines the reason, e.g. `billing.tenx`." },
                                                "metadata": {
                                                    "type": "object",
                                                    "additionalProperties": { "type": "string" },
                                                    "description": "What the reason needs said, e.g. `max_age_seconds` of `REAUTHENTICATION_REQUIRED`.",
                                                },
                                            },
                                        },
                                    ]
                                },
                            },
                        },
                    }
                },
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_is_an_operation_with_its_schemas_and_the_protos_comments() {
        let doc: Value = serde_json::from_str(document()).expect("JSON");
        let operations: usize = doc["paths"]
            .as_object()
            .map_or(0, |p| p.values().map(|m| m.as_object().map_or(0, Map::len)).sum());
        assert_eq!(operations, tenx_proto::edge::http().count());
        let create = &doc["paths"]["/v1/billing/subscriptions"]["post"];
        assert_eq!(create["operationId"], "billing_subscriptions_create");
        assert!(create["responses"]["201"].is_object(), "a creation answers 201");
        assert!(
            create["requestBody"]["content"]["application/json"]["schema"]["properties"]["price_id"]
                .is_object()
        );
        let list = &doc["paths"]["/v1/billing/invoices"]["get"]["parameters"];
        assert!(
            list.as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "status" && p["schema"]["type"] == "array"),
            "statuses is the query parameter `status`: {list}"
        );
        let get = &doc["paths"]["/v1/billing/plans/{plan_id}"]["get"];
        assert_eq!(get["parameters"][0]["in"], "path");
        assert_eq!(get["security"], json!([]), "anonymous");
        // Every reference resolves.
        let text = document();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            let pointer = target.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{target} resolves");
        }
        let subscription = &doc["components"]["schemas"]["Subscription"];
        assert!(
            subscription["properties"]["status"]["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&json!("past_due")))
        );
        assert!(subscription["description"].is_string(), "the proto comment");
        let codes =
            &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"];
        assert_eq!(
            codes,
            &json!([
                "cancelled",
                "unknown",
                "invalid_argument",
                "deadline_exceeded",
                "not_found",
                "already_exists",
                "permission_denied",
                "resource_exhausted",
                "failed_precondition",
                "aborted",
                "out_of_range",
                "unimplemented",
                "internal",
                "unavailable",
                "data_loss",
                "unauthenticated",
                "payload_too_large",
            ])
        );
    }

    #[test]
    fn the_contracts_field_rules_are_the_documents_constraints() {
        let doc: Value = serde_json::from_str(document()).expect("JSON");
        let rule = |m: &str, f: &str| tenx_proto::rules::field_rules(m, f).expect("annotated");
        let signup = &doc["paths"]["/v1/auth/signup"]["post"]["requestBody"];
        assert_eq!(signup["required"], true, "it has required fields");
        let schema = &signup["content"]["application/json"]["schema"];
        assert_eq!(schema["required"], json!(["email", "password"]));
        let email = &schema["properties"]["email"];
        let email_rule = rule("tenx.auth.v1.SignUpRequest", "email");
        assert_eq!(email["pattern"], email_rule.pattern.as_ref().map(|p| p.source).unwrap_or_default());
        assert_eq!((email["minLength"].clone(), email["maxLength"].clone()), (json!(1), json!(254)));
        assert!(email.get("nullable").is_none(), "a required field cannot be null");
        assert_eq!(schema["properties"]["password"]["minLength"], 10);
        assert_eq!(schema["properties"]["display_name"]["nullable"], true, "optional: null is its default");

        // Path, query, lists and their items, enums that must be set.
        let get = &doc["paths"]["/v1/billing/subscriptions/{subscription_id}"]["get"]["parameters"][0];
        assert_eq!(get["schema"]["pattern"], UUID_PATTERN);
        let plans = &doc["paths"]["/v1/billing/plans"]["get"]["parameters"];
        let param = |name: &str| {
            plans.as_array().into_iter().flatten().find(|p| p["name"] == name).cloned().unwrap_or_default()
        };
        assert_eq!(param("page_size")["schema"]["maximum"], 100);
        assert_eq!(param("currency")["schema"]["pattern"], "^$|^[A-Z]{3}$", "empty means unset");
        let read =
            &doc["paths"]["/v1/notifications/read"]["post"]["requestBody"]["content"]["application/json"];
        let ids = &read["schema"]["properties"]["notification_ids"];
        assert_eq!((ids["minItems"].clone(), ids["maxItems"].clone()), (json!(1), json!(100)));
        assert_eq!(ids["items"]["pattern"], UUID_PATTERN);
        let preference = &doc["components"]["schemas"]["PreferenceInput"];
        assert_eq!(preference["required"], json!(["category", "channel"]));
        assert_eq!(preference["properties"]["category"]["enum"], json!(["account", "security", "billing"]));
        assert!(preference["properties"]["channel"].get("nullable").is_none());
        // An answer's schema carries no request rule.
        assert!(doc["components"]["schemas"]["Preference"]["properties"]["category"].get("enum").is_none());

        // A raw body takes the media types its Content-Type field admits.
        let avatar = &doc["paths"]["/v1/me/avatar"]["post"]["requestBody"]["content"];
        let types: Vec<&String> = avatar.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(types, ["image/jpeg", "image/png"]);
        assert_eq!(avatar["image/png"]["schema"]["minLength"], 1);
    }
}
