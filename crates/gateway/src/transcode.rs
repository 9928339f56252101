//! One handler for every HTTP binding of a public RPC: the request is
//! built from the path, the query string and the body as the RPC's
//! `(google.api.http)` annotation says, in the JSON of [`crate::json`],
//! sent upstream as that RPC, and the answer written back as JSON. No
//! code per route: a new public RPC is reachable over HTTP by its
//! annotation alone.
//!
//! What HTTP adds around the call, from the route's declaration:
//! `Idempotency-Key` (required when declared; sent as metadata, and
//! `Idempotent-Replayed` comes back), the write position of services that
//! track one (returned as `x-tenx-wal-position`, and sent with later reads
//! of that service for read-your-writes), `201 Created` for a POST whose
//! answer holds what it created, and `204 No Content` for an empty answer.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Buf;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::Value;
use tenx_proto::edge::{Http, PublicRpc};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataValue};

use crate::error::EdgeError;
use crate::json::{self, Misfit};
use crate::policy::{Ctx, WAL_POSITION};
use crate::state::Gateway;
use crate::writes::WriteScope;

use tenx_common::idempotency::{METADATA as IDEMPOTENCY_KEY, REPLAYED as IDEMPOTENT_REPLAYED};

/// Every tenx message's descriptor, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(tenx_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("tenx_proto's descriptor set does not decode: {e}"))
    })
}

/// The RPC at a gRPC path (`/tenx.auth.v1.AuthService/GetUser`).
pub fn method(path: &str) -> Option<MethodDescriptor> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    pool().get_service_by_name(service)?.methods().find(|m| m.name() == method)
}

/// The request and response descriptors of the RPC at a gRPC path.
pub fn messages(path: &str) -> Option<(MessageDescriptor, MessageDescriptor)> {
    method(path).map(|m| (m.input(), m.output()))
}

/// [`messages`] of a public RPC, looked up once for all of them (a call
/// then neither searches the pool nor walks its service's methods).
fn public_messages(path: &str) -> Option<&'static (MessageDescriptor, MessageDescriptor)> {
    static PUBLIC: OnceLock<HashMap<&'static str, (MessageDescriptor, MessageDescriptor)>> = OnceLock::new();
    PUBLIC
        .get_or_init(|| {
            tenx_proto::edge::http()
                .filter_map(|(route, _)| Some((route.path, messages(route.path)?)))
                .collect()
        })
        .get(path)
}

/// Read-your-writes: the service whose write position a call carries,
/// for a read (GET) of a service that tracks write positions.
pub fn read_scope(route: &PublicRpc, http: &Http) -> Option<WriteScope> {
    WriteScope::of(route.service).filter(|_| http.method == "GET")
}

impl From<Misfit> for EdgeError {
    fn from(m: Misfit) -> Self {
        EdgeError::invalid(&m.field, m.reason)
    }
}

/// Serves one HTTP call of `route`.
pub async fn handle(
    gw: Arc<Gateway>,
    ctx: Ctx,
    route: &'static PublicRpc,
    req: Request,
) -> Result<Response, EdgeError> {
    let http = route.http.as_ref().ok_or_else(internal)?;
    let (input, output) = public_messages(route.path).ok_or_else(internal)?;
    let (mut parts, body) = req.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
    let key = if route.idempotency_key { Some(idempotency_key(&parts.headers)?) } else { None };
    let body = axum::body::to_bytes(body, body_limit(&gw, route)).await.map_err(|_| {
        EdgeError::http(StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::InvalidArgument, "request body too large")
    })?;

    let mut message = DynamicMessage::new(input.clone());
    fill_body(&mut message, http, &parts.headers, &body)?;
    fill_query(&mut message, http, parts.uri.query().unwrap_or_default())?;
    // The path last: what it names is the path's, whatever the body said.
    for (name, value) in params.iter().flat_map(|p| p.iter()) {
        set_text(&mut message, name, value)?;
    }
    for (name, value) in http.fixed {
        set_text(&mut message, name, value)?;
    }

    let upstream = gw.upstream(route.service).ok_or_else(internal)?;
    // Read-your-writes: a read carries the caller's last write position.
    let position = read_scope(route, http)
        .and_then(|scope| {
            let mut uuid = [0; uuid::fmt::Hyphenated::LENGTH];
            let user = ctx.user_uuid().map(|u| &*u.hyphenated().encode_lower(&mut uuid));
            gw.writes.read_position(ctx.position.as_deref(), user, scope)
        })
        .and_then(|p| MetadataValue::<Ascii>::try_from(p).ok());
    let answer = upstream
        .call(ctx.idempotent, ctx.deadline, || {
            let mut request = ctx.to_upstream(message.clone());
            if let Some(key) = &key {
                request.metadata_mut().insert(IDEMPOTENCY_KEY, key.clone());
            }
            if let Some(position) = &position {
                request.metadata_mut().insert(WAL_POSITION, position.clone());
            }
            let (channel, codec) = (upstream.channel.clone(), DynamicCodec { output: output.clone() });
            async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
                grpc.unary(request, axum::http::uri::PathAndQuery::from_static(route.path), codec).await
            }
        })
        .await?;

    let replayed = answer.metadata().get(IDEMPOTENT_REPLAYED).is_some_and(|v| v.as_bytes() == b"true");
    let written = answer.metadata().get(WAL_POSITION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let reply = answer.into_inner();
    let mut response = if !http.response_body.is_empty() {
        raw_answer(&reply, http, &parts.headers)
    } else if output.fields().len() == 0 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let status = if http.creates { StatusCode::CREATED } else { StatusCode::OK };
        (status, axum::Json(json::to_json(&reply))).into_response()
    };
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if !http.cache_control.is_empty()
        && let Ok(value) = HeaderValue::from_str(http.cache_control)
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    if let (Some(scope), Some(position)) = (WriteScope::of(route.service), written) {
        let tagged = gw.writes.remember(ctx.user_id().as_deref(), scope, &position).await;
        if let Ok(value) = HeaderValue::from_str(&tagged) {
            response.headers_mut().insert(WAL_POSITION, value);
        }
    }
    Ok(response)
}

/// An answer whose binding names a bytes field of it (`response_body`):
/// those bytes are the body, as the route's media type, with a strong
/// `ETag` (a hash of the bytes, so equal bytes always get equal tags);
/// the caller's `If-None-Match` naming it gets `304` without them.
fn raw_answer(reply: &DynamicMessage, http: &Http, request: &HeaderMap) -> Response {
    use sha2::Digest as _;
    let bytes = match reply.get_field_by_name(http.response_body).as_deref() {
        Some(Pb::Bytes(b)) => b.clone(),
        _ => bytes::Bytes::new(),
    };
    let digest = sha2::Sha256::digest(&bytes);
    let tag: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{tag}\"");
    // Weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"`; `*` matches any.
    let known =
        request.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
            list.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
        });
    let mut response = if known {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, http.media_type)], bytes).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The largest body `route` takes: its own `max_body_bytes` (an image
/// upload), else the gateway's `http.body_limit_bytes`.
pub fn body_limit(gw: &Gateway, route: &PublicRpc) -> usize {
    match route.http.map_or(0, |h| h.max_body_bytes) {
        0 => gw.settings.http.body_limit_bytes,
        own => usize::try_from(own).unwrap_or(usize::MAX),
    }
}

/// A route the build checked cannot miss its descriptors; if it ever
/// did, the caller learns nothing more than this.
fn internal() -> EdgeError {
    EdgeError::new(tonic::Code::Internal, "internal error")
}

/// The caller's key, checked as the services check it
/// (`tenx_common::idempotency`); refused here, before any upstream call,
/// when missing.
fn idempotency_key(headers: &HeaderMap) -> Result<MetadataValue<Ascii>, EdgeError> {
    const FIELD: &str = "Idempotency-Key";
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        EdgeError::invalid(FIELD, "is required on this call (any unique string, reused only to retry it)")
    })?;
    let key = value
        .to_str()
        .ok()
        .filter(|k| tenx_common::idempotency::well_formed(k))
        .ok_or_else(|| EdgeError::invalid(FIELD, tenx_common::idempotency::RULE))?;
    MetadataValue::try_from(key).map_err(|_| EdgeError::invalid(FIELD, tenx_common::idempotency::RULE))
}

/// The body as the binding says: every field (`*`), one message field, or
/// the raw bytes of one bytes field (a webhook whose signature covers
/// them). Headers the route maps to fields are read here too.
fn fill_body(
    message: &mut DynamicMessage,
    http: &Http,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), EdgeError> {
    for (header_name, field) in http.headers {
        let value = headers.get(*header_name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        set_text(message, field, value)?;
    }
    let desc = message.descriptor();
    match http.body {
        "" => Ok(()),
        "*" => {
            let json = parse_json(headers, body)?;
            Ok(json::merge_json(message, &json, "")?)
        }
        name => {
            let field = desc.get_field_by_name(name).ok_or_else(internal)?;
            match field.kind() {
                prost_reflect::Kind::Bytes => {
                    message.set_field(&field, Pb::Bytes(bytes::Bytes::copy_from_slice(body)));
                }
                prost_reflect::Kind::Message(desc) => {
                    let value = json::from_json(&desc, &parse_json(headers, body)?, name)?;
                    message.set_field(&field, Pb::Message(value));
                }
                _ => return Err(internal()),
            }
            Ok(())
        }
    }
}

/// The body as a JSON object: empty is `{}` (a POST with nothing to say);
/// anything else, `null` and arrays included, is refused.
fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, EdgeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/json") || t.to_ascii_lowercase().ends_with("+json")
        });
    if !json_type {
        return Err(EdgeError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            "expected a request with `Content-Type: application/json`",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(_) => Err(EdgeError::invalid("body", "must be a JSON object")),
        Err(e) => Err(EdgeError::invalid("body", format!("not valid JSON: {e}"))),
    }
}

/// Query parameters: `name=value` for a scalar field, repeated or
/// comma-separated (`status=paid,open`) for a list. Only fields the body
/// and path leave out; anything else is refused by name.
fn fill_query(message: &mut DynamicMessage, http: &Http, query: &str) -> Result<(), EdgeError> {
    let desc = message.descriptor();
    let mut lists: Vec<(prost_reflect::FieldDescriptor, Vec<Pb>)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let field = json::field_named(&desc, &name)
            .filter(|f| http.body != "*" && json::textual(f))
            .ok_or_else(|| EdgeError::invalid(&name, "is not a query parameter of this route"))?;
        if field.is_list() {
            let mut items = Vec::new();
            for (i, part) in value.split(',').filter(|p| !p.is_empty()).enumerate() {
                items.push(json::scalar_from_text(&field.kind(), part, &format!("{name}[{i}]"))?);
            }
            match lists.iter_mut().find(|(f, _)| *f == field) {
                Some((_, existing)) => existing.extend(items),
                None => lists.push((field, items)),
            }
        } else {
            message.set_field(&field, json::scalar_from_text(&field.kind(), &value, &name)?);
        }
    }
    for (field, items) in lists {
        message.set_field(&field, Pb::List(items));
    }
    Ok(())
}

/// Sets a scalar field from text (a path segment, a fixed value, a header).
fn set_text(message: &mut DynamicMessage, name: &str, value: &str) -> Result<(), EdgeError> {
    let field = message.descriptor().get_field_by_name(name).ok_or_else(internal)?;
    let value = json::scalar_from_text(&field.kind(), value, name)?;
    message.set_field(&field, value);
    Ok(())
}

/// A gRPC codec for messages known by their descriptor only.
#[derive(Debug, Clone)]
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder { output: self.output.clone() }
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst).map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

#[derive(Debug)]
struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.output.clone(), bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost_reflect::Kind;

    use super::*;

    fn walk(desc: &MessageDescriptor, seen: &mut BTreeSet<String>, foreign: &mut Vec<String>) {
        if !seen.insert(desc.full_name().to_owned()) {
            return;
        }
        for field in desc.fields() {
            if let Kind::Message(inner) = field.kind() {
                match inner.full_name() {
                    "google.protobuf.Timestamp" => {}
                    name if name.starts_with("google.") && !inner.is_map_entry() => {
                        foreign.push(format!("{}.{}: {name}", desc.full_name(), field.name()));
                    }
                    _ => walk(&inner, seen, foreign),
                }
            }
        }
    }

    /// The JSON mapping special-cases one well-known type (Timestamp); a
    /// public message using another (Struct, Duration, Any…) would be
    /// written as its internal fields, so it must be taught first.
    #[test]
    fn every_public_rpc_has_descriptors_and_messages_the_json_mapping_knows() {
        let (mut seen, mut foreign) = (BTreeSet::new(), Vec::new());
        for route in tenx_proto::edge::PUBLIC {
            let (input, output) =
                messages(route.path).unwrap_or_else(|| panic!("{} has no descriptors", route.path));
            walk(&input, &mut seen, &mut foreign);
            walk(&output, &mut seen, &mut foreign);
        }
        assert!(foreign.is_empty(), "{foreign:?}");
        assert!(seen.contains("tenx.billing.v1.Invoice"));
    }
}
