//! The `tenx.notification.v1.NotificationService` gRPC API.

use std::sync::Arc;
use std::time::SystemTime;

use prost::Message as _;
use sha2::{Digest, Sha256};
use tenx_common::authn::{self, Principal};
use tenx_common::db::Prepared;
use tenx_common::outbox::{self, NewEvent};
use tenx_proto::notification::v1 as pb;
use tenx_proto::notification::v1::notification_service_server::NotificationService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use tenx_common::queue::dead_letters::DeadLetters;
use tenx_common::queue::{Amqp, Topology};

use crate::deliver::{DeliverError, Deliverer};
use crate::email_log;
use crate::error::NotifyError;
use crate::preferences;
use crate::preferences::channel_label;
use crate::structs::{json_len, to_json};
use crate::templates::{CATEGORIES, TemplateError};
use crate::webhook_api;
use crate::webhooks::Webhooks;

const MAX_DATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct NotificationApi {
    deliverer: Arc<Deliverer>,
    webhooks: Arc<Webhooks>,
    /// The notification queue's dead letters, where failed emails' events
    /// wait for RedriveEmail.
    letters: DeadLetters,
    work: Topology,
}

impl NotificationApi {
    pub fn new(deliverer: Arc<Deliverer>, webhooks: Arc<Webhooks>, amqp: Amqp, work: Topology) -> Self {
        Self { deliverer, webhooks, letters: DeadLetters::new(amqp, vec![work.clone()]), work }
    }
}

/// The user the call acts for, as the shared authentication layer
/// verified it (`tenx_common::authn`).
fn caller(extensions: &tonic::Extensions) -> Result<Uuid, NotifyError> {
    authn::principal(extensions).and_then(Principal::user_id).ok_or(NotifyError::Unauthenticated("no caller"))
}

/// Sending and webhook administration are for operators: a service, or a
/// user whose verified token carries the `admin` role. The access rule
/// (CALLER_OPERATOR) admitted only those; checked again here so the
/// handler never relies on wiring alone.
fn operator(extensions: &tonic::Extensions) -> Result<(), NotifyError> {
    let principal = authn::principal(extensions).ok_or(NotifyError::Unauthenticated("no caller"))?;
    if principal.is_operator() { Ok(()) } else { Err(NotifyError::PermissionDenied) }
}

fn channel_of(field: &'static str, raw: i32) -> Result<pb::Channel, NotifyError> {
    match pb::Channel::try_from(raw) {
        Ok(pb::Channel::Email) => Ok(pb::Channel::Email),
        Ok(pb::Channel::InApp) => Ok(pb::Channel::InApp),
        _ => Err(NotifyError::invalid(field, "must be CHANNEL_EMAIL or CHANNEL_IN_APP")),
    }
}

impl NotificationApi {
    async fn send(&self, request: pb::SendRequest) -> Result<pb::SendResponse, NotifyError> {
        let user = Uuid::parse_str(&request.user_id)
            .map_err(|_| NotifyError::invalid("user_id", "must be a UUID"))?;
        let key = request.idempotency_key.trim();
        if key.is_empty() || key.len() > 200 {
            return Err(NotifyError::invalid("idempotency_key", "is required, at most 200 characters"));
        }
        if request.channels.is_empty() || request.channels.len() > 2 {
            return Err(NotifyError::invalid("channels", "one or two of CHANNEL_EMAIL, CHANNEL_IN_APP"));
        }
        let mut channels = Vec::new();
        for raw in &request.channels {
            let channel = channel_of("channels", *raw)?;
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        if channels.contains(&pb::Channel::Email)
            && (request.email.len() > 254 || request.email.parse::<lettre::Address>().is_err())
        {
            return Err(NotifyError::invalid("email", "must be an email address"));
        }
        let data = request.data.clone().unwrap_or_default();
        if json_len(&data) > MAX_DATA_BYTES {
            return Err(NotifyError::invalid(
                "data",
                format!("must be at most {MAX_DATA_BYTES} bytes as JSON"),
            ));
        }
        // Render now: a bad template or missing variable is the caller's
        // error, reported here, not a dead letter later. Only the parts of
        // the channels asked for, as delivery does.
        match self.deliverer.templates.render_for(&request.template, &to_json(&data), &channels) {
            Ok(rendered) if channels.contains(&pb::Channel::InApp) && rendered.in_app.is_none() => {
                return Err(NotifyError::invalid(
                    "channels",
                    format!("template {:?} has no in-app part", request.template),
                ));
            }
            Ok(_) => {}
            Err(TemplateError::Unknown(_)) => {
                return Err(NotifyError::NotFound(format!("template {:?}", request.template)));
            }
            Err(e @ TemplateError::Render { .. }) => return Err(NotifyError::invalid("data", e.to_string())),
        }
        let hash = Sha256::digest(request.encode_to_vec()).to_vec();
        let labels: Vec<String> = channels.iter().map(|c| channel_label(*c).to_owned()).collect();

        let mut conn = self.deliverer.db.write().await?;
        let tx = conn.transaction().await?;
        let id = Uuid::now_v7();
        let inserted = tx
            .execute_cached(
                "INSERT INTO sends (idempotency_key, request_hash, notification_id, channels) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (idempotency_key) DO NOTHING",
                &[&key, &hash, &id, &labels],
            )
            .await?;
        let id = if inserted == 1 {
            let event = pb::SendRequested {
                notification_id: id.to_string(),
                user_id: user.to_string(),
                email: request.email.clone(),
                template: request.template.clone(),
                channels: channels.iter().map(|c| *c as i32).collect(),
                data: Some(data),
            };
            outbox::enqueue(&tx, &NewEvent::of(&user.to_string(), &event)).await?;
            tx.commit().await?;
            id
        } else {
            let row = tx
                .query_one_cached(
                    "SELECT request_hash, notification_id FROM sends WHERE idempotency_key = $1",
                    &[&key],
                )
                .await?;
            if row.get::<_, Vec<u8>>(0) != hash {
                return Err(NotifyError::KeyReused);
            }
            row.get(1)
        };
        let allowed =
            self.deliverer.allowed(user, &request.template, &channels).await.map_err(|e| match e {
                DeliverError::Template(t) => NotifyError::NotFound(t.to_string()),
                DeliverError::Transient(t) | DeliverError::Rejected(t) => NotifyError::Internal(t),
            })?;
        Ok(pb::SendResponse {
            notification_id: id.to_string(),
            channels: allowed.iter().map(|c| *c as i32).collect(),
        })
    }

    async fn list(
        &self,
        user: Uuid,
        request: pb::ListNotificationsRequest,
    ) -> Result<pb::ListNotificationsResponse, NotifyError> {
        let size = match request.page_size {
            0 => 20,
            1..=100 => i64::from(request.page_size),
            _ => return Err(NotifyError::invalid("page_size", "must be at most 100")),
        };
        let (after_micros, after_id) = if request.page_token.is_empty() {
            (i64::MAX, Uuid::max())
        } else {
            let bad = || NotifyError::invalid("page_token", "is not a token this service issued");
            let (t, i) = request.page_token.split_once('_').ok_or_else(bad)?;
            (t.parse().map_err(|_| bad())?, Uuid::parse_str(i).map_err(|_| bad())?)
        };
        let conn = self.deliverer.db.write().await?;
        let rows = conn
            .query_cached(
                "SELECT id, category, title, body, created_at, read_at, \
                        (extract(epoch FROM created_at) * 1000000)::bigint AS micros \
                 FROM notifications WHERE user_id = $1 AND ($2::boolean = false OR read_at IS NULL) \
                   AND ((extract(epoch FROM created_at) * 1000000)::bigint, id) < ($3, $4) \
                 ORDER BY created_at DESC, id DESC LIMIT $5",
                &[&user, &request.unread_only, &after_micros, &after_id, &(size + 1)],
            )
            .await?;
        let more = rows.len() as i64 > size;
        let page = &rows[..rows.len().min(size as usize)];
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => format!("{}_{}", last.get::<_, i64>("micros"), last.get::<_, Uuid>("id")),
            _ => String::new(),
        };
        let unread: i64 = conn
            .query_one_cached(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
                &[&user],
            )
            .await?
            .get(0);
        let notifications = page
            .iter()
            .map(|r| pb::Notification {
                id: r.get::<_, Uuid>("id").to_string(),
                category: r.get("category"),
                title: r.get("title"),
                body: r.get("body"),
                created_at: Some(r.get::<_, SystemTime>("created_at").into()),
                read_at: r.get::<_, Option<SystemTime>>("read_at").map(Into::into),
            })
            .collect();
        Ok(pb::ListNotificationsResponse { notifications, next_page_token, unread_count: unread as u32 })
    }

    async fn mark_read(
        &self,
        user: Uuid,
        request: pb::MarkReadRequest,
    ) -> Result<pb::MarkReadResponse, NotifyError> {
        if request.notification_ids.is_empty() || request.notification_ids.len() > 100 {
            return Err(NotifyError::invalid("notification_ids", "1 to 100 ids"));
        }
        let ids = request
            .notification_ids
            .iter()
            .map(|id| {
                Uuid::parse_str(id)
                    .map_err(|_| NotifyError::invalid("notification_ids", "each must be a UUID"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let updated = self
            .deliverer
            .db
            .write()
            .await?
            .execute_cached(
                "UPDATE notifications SET read_at = now() WHERE user_id = $1 AND id = ANY($2) AND read_at IS NULL",
                &[&user, &ids],
            )
            .await?;
        Ok(pb::MarkReadResponse { updated: updated as u32 })
    }

    async fn preferences(&self, user: Uuid) -> Result<pb::GetPreferencesResponse, NotifyError> {
        let prefs = preferences::load(&self.deliverer.preferences, &self.deliverer.reader, user)
            .await
            .map_err(NotifyError::Internal)?;
        let mut out = Vec::new();
        for kind in CATEGORIES {
            for channel in [pb::Channel::Email, pb::Channel::InApp] {
                out.push(pb::Preference {
                    category: kind.category.to_owned(),
                    channel: channel as i32,
                    enabled: kind.critical || prefs.enabled(kind.category, channel),
                    critical: kind.critical,
                });
            }
        }
        Ok(pb::GetPreferencesResponse { preferences: out })
    }

    async fn update_preferences(
        &self,
        user: Uuid,
        request: pb::UpdatePreferencesRequest,
    ) -> Result<pb::UpdatePreferencesResponse, NotifyError> {
        // Counts, categories and channels are the contract's rules; muting
        // a critical category is well formed but refused.
        let mut changes = Vec::new();
        for p in &request.preferences {
            let kind = CATEGORIES.iter().find(|k| k.category == p.category).ok_or_else(|| {
                NotifyError::invalid("preferences", format!("unknown category {:.40?}", p.category))
            })?;
            let channel = channel_of("preferences", p.channel)?;
            if kind.critical && !p.enabled {
                return Err(NotifyError::Precondition(format!(
                    "{} notifications cannot be turned off",
                    kind.category
                )));
            }
            changes.push((kind.category, channel_label(channel), p.enabled));
        }
        let mut conn = self.deliverer.db.write().await?;
        let tx = conn.transaction().await?;
        for (category, channel, enabled) in &changes {
            tx.execute_cached(
                "INSERT INTO preferences (user_id, category, channel, enabled) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, category, channel) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()",
                &[&user, category, channel, enabled],
            )
            .await?;
        }
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.deliverer.preferences.invalidate_after(&user.to_string(), Some(written)).await;
        let preferences = self.preferences(user).await?.preferences;
        Ok(pb::UpdatePreferencesResponse { preferences })
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn send(&self, request: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        operator(request.extensions())?;
        Ok(Response::new(NotificationApi::send(self, request.into_inner()).await?))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let user = caller(request.extensions())?;
        Ok(Response::new(self.list(user, request.into_inner()).await?))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let user = caller(request.extensions())?;
        Ok(Response::new(NotificationApi::mark_read(self, user, request.into_inner()).await?))
    }

    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::GetPreferencesResponse>, Status> {
        let user = caller(request.extensions())?;
        Ok(Response::new(self.preferences(user).await?))
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::UpdatePreferencesResponse>, Status> {
        let user = caller(request.extensions())?;
        Ok(Response::new(NotificationApi::update_preferences(self, user, request.into_inner()).await?))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::CreateWebhookEndpointResponse>, Status> {
        operator(request.extensions())?;
        let allow = self.webhooks.allow_private_networks();
        Ok(Response::new(webhook_api::create(&self.webhooks.db, request.into_inner(), allow).await?))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        operator(request.extensions())?;
        Ok(Response::new(webhook_api::list(&self.webhooks.db).await?))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        operator(request.extensions())?;
        webhook_api::delete(&self.webhooks.db, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        operator(request.extensions())?;
        Ok(Response::new(webhook_api::rotate(&self.webhooks.db, request.into_inner()).await?))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        operator(request.extensions())?;
        Ok(Response::new(webhook_api::deliveries(&self.webhooks.db, request.into_inner()).await?))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        operator(request.extensions())?;
        Ok(Response::new(webhook_api::dead_letters(&self.webhooks.db, request.into_inner()).await?))
    }

    async fn redrive_dead_letter(
        &self,
        request: Request<pb::RedriveDeadLetterRequest>,
    ) -> Result<Response<pb::RedriveDeadLetterResponse>, Status> {
        operator(request.extensions())?;
        webhook_api::redrive(&self.webhooks.db, request.into_inner()).await?;
        Ok(Response::new(pb::RedriveDeadLetterResponse {}))
    }

    async fn list_email_deliveries(
        &self,
        request: Request<pb::ListEmailDeliveriesRequest>,
    ) -> Result<Response<pb::ListEmailDeliveriesResponse>, Status> {
        operator(request.extensions())?;
        Ok(Response::new(email_log::list(&self.webhooks.db, request.into_inner()).await?))
    }

    async fn redrive_email(
        &self,
        request: Request<pb::RedriveEmailRequest>,
    ) -> Result<Response<pb::RedriveEmailResponse>, Status> {
        operator(request.extensions())?;
        email_log::redrive(&self.webhooks.db, &self.letters, &self.work, request.into_inner()).await?;
        Ok(Response::new(pb::RedriveEmailResponse {}))
    }
}
