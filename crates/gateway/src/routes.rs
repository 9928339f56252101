//! The public HTTP/JSON API: one handler per HTTP binding of a public
//! RPC (the table is `tenx_proto::edge`, declared in the protos), each a
//! thin translation to one upstream gRPC call (billing's are in
//! [`crate::billing`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::notification::v1 as notification;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;

use crate::app::Gateway;
use crate::error::EdgeError;
use crate::policy::Ctx;

/// A public RPC, with its HTTP binding and edge policy as declared in the
/// protos (`tenx_proto::edge::PUBLIC`).
pub type Route = tenx_proto::edge::PublicRpc;

/// A JSON request body; anything unparsable is a 400 naming the problem
/// (or 413 when too large), in the one error shape.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = EdgeError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(
                EdgeError::http(rejection.status(), tonic::Code::InvalidArgument, "request body too large"),
            ),
            Err(rejection) => Err(EdgeError::invalid("body", rejection.body_text())),
        }
    }
}

pub(crate) fn ts(t: Option<prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn user(u: Option<auth::User>) -> Value {
    let u = u.unwrap_or_default();
    json!({
        "id": u.id,
        "email": u.email,
        "email_verified": u.email_verified,
        "display_name": u.display_name,
        "avatar_64_id": u.avatar_64_id,
        "avatar_256_id": u.avatar_256_id,
        "created_at": ts(u.created_at),
        "updated_at": ts(u.updated_at),
    })
}

fn tokens(t: Option<auth::Tokens>) -> Value {
    let t = t.unwrap_or_default();
    json!({
        "access_token": t.access_token,
        "access_token_expires_at": ts(t.access_token_expires_at),
        "refresh_token": t.refresh_token,
        "session_id": t.session_id,
    })
}

pub(crate) type Gw = State<Arc<Gateway>>;

fn auth_client(gw: &Gateway) -> AuthServiceClient<tenx_common::grpc::TracedChannel> {
    AuthServiceClient::new(gw.auth.channel.clone())
}

fn notification_client(gw: &Gateway) -> NotificationServiceClient<tenx_common::grpc::TracedChannel> {
    NotificationServiceClient::new(gw.notification.channel.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignUp {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    device_name: String,
}

pub(crate) async fn signup(
    State(gw): Gw,
    ctx: Ctx,
    JsonBody(b): JsonBody<SignUp>,
) -> Result<Response, EdgeError> {
    let message = auth::SignUpRequest {
        email: b.email,
        password: b.password,
        display_name: b.display_name,
        device_name: b.device_name,
    };
    let r = gw
        .auth
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (auth_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.sign_up(request).await }
        })
        .await?
        .into_inner();
    let body = json!({ "user": user(r.user), "tokens": tokens(r.tokens) });
    Ok((axum::http::StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    email: String,
    password: String,
    #[serde(default)]
    device_name: String,
}

pub(crate) async fn login(
    State(gw): Gw,
    ctx: Ctx,
    JsonBody(b): JsonBody<Login>,
) -> Result<Json<Value>, EdgeError> {
    let message = auth::LoginRequest { email: b.email, password: b.password, device_name: b.device_name };
    let r = gw
        .auth
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (auth_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.login(request).await }
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "user": user(r.user), "tokens": tokens(r.tokens) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshToken {
    refresh_token: String,
}

pub(crate) async fn refresh(
    State(gw): Gw,
    ctx: Ctx,
    JsonBody(b): JsonBody<RefreshToken>,
) -> Result<Json<Value>, EdgeError> {
    let message = auth::RefreshRequest { refresh_token: b.refresh_token };
    let r = gw
        .auth
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (auth_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.refresh(request).await }
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "tokens": tokens(r.tokens) })))
}

pub(crate) async fn logout(
    State(gw): Gw,
    ctx: Ctx,
    JsonBody(b): JsonBody<RefreshToken>,
) -> Result<Response, EdgeError> {
    let message = auth::LogoutRequest { refresh_token: b.refresh_token };
    gw.auth
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (auth_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.logout(request).await }
        })
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn me_get(State(gw): Gw, ctx: Ctx) -> Result<Json<Value>, EdgeError> {
    let message = auth::GetUserRequest { user_id: String::new() };
    // Read-your-writes: the position of this user's last write through
    // any gateway (sent back by the client) or through this one.
    let position = gw.read_position(&ctx, crate::app::WriteScope::Auth);
    let r = gw
        .auth
        .call(ctx.idempotent, ctx.deadline, || {
            let mut request = ctx.to_upstream(message.clone());
            if let Some(p) = position.as_deref().and_then(|p| p.parse().ok()) {
                request.metadata_mut().insert(crate::policy::WAL_POSITION, p);
            }
            let mut client = auth_client(&gw);
            async move { client.get_user(request).await }
        })
        .await?;
    Ok(Json(json!({ "user": user(r.into_inner().user) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateMe {
    display_name: String,
}

pub(crate) async fn me_update(
    State(gw): Gw,
    ctx: Ctx,
    JsonBody(b): JsonBody<UpdateMe>,
) -> Result<Response, EdgeError> {
    let message = auth::UpdateProfileRequest { display_name: b.display_name };
    let r = gw
        .auth
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (auth_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.update_profile(request).await }
        })
        .await?;
    let position =
        r.metadata().get(crate::policy::WAL_POSITION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut response = Json(json!({ "user": user(r.into_inner().user) })).into_response();
    if let Some(p) = position {
        let p = gw.remember_write(&ctx, crate::app::WriteScope::Auth, &p).await;
        if let Ok(v) = HeaderValue::from_str(&p) {
            response.headers_mut().insert(crate::policy::WAL_POSITION, v);
        }
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    unread_only: bool,
}

pub(crate) async fn notifications_list(
    State(gw): Gw,
    ctx: Ctx,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, EdgeError> {
    let Query(q) = query.map_err(|e| EdgeError::invalid("query", e.body_text()))?;
    let message = notification::ListNotificationsRequest {
        page_size: q.page_size,
        page_token: q.page_token,
        unread_only: q.unread_only,
    };
    let r = gw
        .notification
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (notification_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.list_notifications(request).await }
        })
        .await?
        .into_inner();
    let items: Vec<Value> = r
        .notifications
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "category": n.category,
                "title": n.title,
                "body": n.body,
                "created_at": ts(n.created_at),
                "read_at": ts(n.read_at),
            })
        })
        .collect();
    Ok(Json(json!({
        "notifications": items,
        "next_page_token": r.next_page_token,
        "unread_count": r.unread_count,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MarkRead {
    notification_ids: Vec<String>,
}

pub(crate) async fn notifications_mark_read(
    State(gw): Gw,
    ctx: Ctx,
    JsonBody(b): JsonBody<MarkRead>,
) -> Result<Json<Value>, EdgeError> {
    let message = notification::MarkReadRequest { notification_ids: b.notification_ids };
    let r = gw
        .notification
        .call(ctx.idempotent, ctx.deadline, || {
            let (mut client, request) = (notification_client(&gw), ctx.to_upstream(message.clone()));
            async move { client.mark_read(request).await }
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "updated": r.updated })))
}
