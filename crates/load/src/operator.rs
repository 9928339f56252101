//! The operator's side of `notify`: a service token for the `operator`
//! client (its secret from `TENX_LOAD_OPERATOR_SECRET`, never the command
//! line, which `ps` shows), and `Send` straight to notification, an
//! operator RPC the edge does not serve.

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tenx_proto::auth::v1::IssueServiceTokenRequest;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::notification::v1 as pb;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::door::{Services, status};

/// The environment variable that holds the `operator` client's secret
/// (auth's `service_clients.operator`).
pub const SECRET_ENV: &str = "TENX_LOAD_OPERATOR_SECRET";

/// The template `notify` sends: its in-app body names the invoice number,
/// which carries the marker the recipient's inbox is searched for.
pub const TEMPLATE: &str = "billing_receipt";

#[derive(Debug, Clone)]
pub struct Operator {
    notification: NotificationServiceClient<Channel>,
    /// `Bearer <service token>`.
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Operator {
    /// Gets a service token from auth for `secret` and connects to
    /// notification.
    pub async fn connect(services: Services, secret: &str) -> anyhow::Result<Self> {
        let auth = Endpoint::from_shared(format!("http://{}", services.auth))?.connect().await?;
        let request = IssueServiceTokenRequest { service: "operator".into(), secret: secret.into() };
        let token = AuthServiceClient::new(auth)
            .issue_service_token(request)
            .await
            .map_err(|e| anyhow::anyhow!("the operator's service token: {}", status(e)))?
            .into_inner()
            .access_token;
        let channel = Endpoint::from_shared(format!("http://{}", services.notification))?.connect().await?;
        Ok(Self {
            notification: NotificationServiceClient::new(channel),
            bearer: format!("Bearer {token}").parse()?,
        })
    }

    /// Sends a receipt whose invoice number is `marker` to the user, by
    /// email and in-app (`key` sends it once).
    pub async fn send(
        &self,
        user_id: String,
        email: String,
        marker: String,
        key: String,
    ) -> Result<(), String> {
        let text = |s: &str| Value { kind: Some(Kind::StringValue(s.to_owned())) };
        let card = Struct {
            fields: [("brand".to_owned(), text("Visa")), ("last4".to_owned(), text("4242"))].into(),
        };
        let line = Struct {
            fields: [("description".to_owned(), text("tenx-load")), ("amount".to_owned(), text("$1.00"))]
                .into(),
        };
        let lines = prost_types::ListValue { values: vec![Value { kind: Some(Kind::StructValue(line)) }] };
        let data = Struct {
            fields: [
                ("amount_paid".to_owned(), text("$1.00")),
                ("paid_on".to_owned(), text("today")),
                ("plan_name".to_owned(), text("Load")),
                ("period_start".to_owned(), text("today")),
                ("period_end".to_owned(), text("next month")),
                ("invoice_number".to_owned(), text(&marker)),
                ("card".to_owned(), Value { kind: Some(Kind::StructValue(card)) }),
                ("lines".to_owned(), Value { kind: Some(Kind::ListValue(lines)) }),
            ]
            .into(),
        };
        let request = pb::SendRequest {
            user_id,
            email,
            template: TEMPLATE.into(),
            channels: vec![pb::Channel::Email as i32, pb::Channel::InApp as i32],
            data: Some(data),
            idempotency_key: key,
        };
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert("authorization", self.bearer.clone());
        let reply = self.notification.clone().send(request).await.map_err(status)?.into_inner();
        if reply.channels.len() == 2 {
            Ok(())
        } else {
            Err(format!("Send used {:?}, not email and in-app", reply.channels))
        }
    }
}
