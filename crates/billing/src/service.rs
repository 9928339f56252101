//! The gRPC API: `tenx.billing.v1.BillingService`.
//!
//! Built so far: the catalog, customers and payment methods (with
//! idempotency keys). The subscription, invoice, payment, usage and ledger
//! RPCs answer UNIMPLEMENTED until they land (docs/services/billing.md is
//! their design).

use std::sync::Arc;

use tenx_common::db::Db;
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::billing_service_server::BillingService;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::error::BillingError;
use crate::idempotency::{self, Claimed, Keys};
use crate::provider::{PaymentProvider, ProviderError, SimulatedProvider};
use crate::{customers, payment_methods};

/// Request metadata with the caller's user id, set by the gateway.
pub const USER_ID: &str = "x-tenx-user-id";
/// The caller's roles (comma-separated), set by the gateway.
pub const ROLES: &str = "x-tenx-roles";
const METHOD_PREFIX: &str = "/tenx.billing.v1.BillingService/";

/// Everything the RPCs share.
#[derive(Debug)]
pub struct Core {
    pub db: Arc<Db>,
    pub clock: Arc<dyn Clock>,
    pub catalog: Catalog,
    pub keys: Keys,
    pub provider: Arc<SimulatedProvider>,
    pub currency_default: String,
}

#[derive(Debug, Clone)]
pub struct BillingApi {
    core: Arc<Core>,
}

impl BillingApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn caller(metadata: &MetadataMap) -> Result<Uuid, BillingError> {
    metadata
        .get(USER_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or(BillingError::Unauthenticated("no caller"))
}

fn is_admin(metadata: &MetadataMap) -> bool {
    metadata
        .get(ROLES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|roles| roles.split(',').any(|r| r.trim() == "admin"))
}

fn uuid(field: &str, raw: &str) -> Result<Uuid, BillingError> {
    Uuid::parse_str(raw).map_err(|_| BillingError::invalid(field, "must be a UUID"))
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented yet (see docs/services/billing.md)"))
}

/// A response, marked when it is a stored one replayed.
fn respond<T>(message: T, replayed: bool) -> Response<T> {
    let mut response = Response::new(message);
    if replayed {
        response.metadata_mut().insert(idempotency::REPLAYED, MetadataValue::from_static("true"));
    }
    response
}

impl Core {
    async fn get_customer(
        &self,
        metadata: &MetadataMap,
        request: pb::GetCustomerRequest,
    ) -> Result<pb::GetCustomerResponse, BillingError> {
        let user = caller(metadata)?;
        let conn = self.db.write().await?;
        let row = if request.customer_id.is_empty() {
            customers::of_user(&*conn, user).await?
        } else {
            let id = uuid("customer_id", &request.customer_id)?;
            // Not yours and not found look the same: ids cannot be probed.
            customers::by_id(&*conn, id)
                .await?
                .filter(|row| is_admin(metadata) || row.get::<_, Uuid>("user_id") == user)
        };
        let row = row.ok_or(BillingError::NotFound("customer"))?;
        let customer = customers::to_proto(&*conn, &row).await?;
        let payment_methods = payment_methods::of_customer(&*conn, row.get("id")).await?;
        Ok(pb::GetCustomerResponse { customer: Some(customer), payment_methods })
    }

    async fn add_payment_method(
        &self,
        metadata: &MetadataMap,
        request: pb::AddPaymentMethodRequest,
    ) -> Result<(pb::AddPaymentMethodResponse, bool), BillingError> {
        let user = caller(metadata)?;
        let key = idempotency::key_of(metadata, true)?.unwrap_or_default();
        let token = request.token.trim();
        if token.is_empty() || token.len() > 200 {
            return Err(BillingError::invalid("token", "is required (at most 200 characters)"));
        }
        if !self.provider.recognizes(token) {
            return Err(BillingError::invalid("token", "is not a token the payment provider issued"));
        }
        let method = format!("{METHOD_PREFIX}AddPaymentMethod");
        let hash = idempotency::request_hash(&method, &request);
        let claim = match self
            .keys
            .claim(&self.db, self.clock.as_ref(), &user.to_string(), &key, &method, &hash)
            .await?
        {
            Claimed::Replay(status, Some(body)) if status.code() == tonic::Code::Ok => {
                let response = prost::Message::decode(body.as_slice())
                    .map_err(|e| BillingError::Internal(format!("stored response: {e}")))?;
                return Ok((response, true));
            }
            Claimed::Replay(status, _) => return Err(BillingError::Replayed(status)),
            Claimed::Run(claim) => claim,
        };
        let outcome = async {
            let attached = match self.provider.attach(token).await {
                Ok(attached) => attached,
                Err(ProviderError::Unavailable(m)) => {
                    return Err(BillingError::Provider { reason: "PROVIDER_ERROR", message: m });
                }
                Err(ProviderError::Timeout) => {
                    return Err(BillingError::Provider {
                        reason: "PROVIDER_TIMEOUT",
                        message: "the payment provider did not answer in time".into(),
                    });
                }
            };
            let mut conn = self.db.write().await?;
            let tx = conn.transaction().await?;
            let (customer, _) = customers::ensure(&tx, self.clock.as_ref(), user, "").await?;
            let payment_method = payment_methods::insert(
                &tx,
                self.clock.now(),
                customer,
                self.provider.name(),
                &attached,
                request.set_default,
            )
            .await?;
            let response = pb::AddPaymentMethodResponse { payment_method: Some(payment_method) };
            self.keys.complete(&tx, self.clock.as_ref(), &claim, &response).await?;
            tx.commit().await?;
            Ok(response)
        }
        .await;
        match outcome {
            Ok(response) => Ok((response, false)),
            Err(error) => Err(self.keys.fail(&self.db, self.clock.as_ref(), &claim, error).await),
        }
    }

    async fn list_plans(
        &self,
        metadata: &MetadataMap,
        request: pb::ListPlansRequest,
    ) -> Result<pb::ListPlansResponse, BillingError> {
        let currency = if request.all_currencies {
            None
        } else if !request.currency.is_empty() {
            let c = request.currency.as_str();
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(BillingError::invalid("currency", "must be an ISO 4217 code like USD"));
            }
            Some(c.to_owned())
        } else {
            // The caller's own currency if they bill in one already.
            let mut own = None;
            if let Ok(user) = caller(metadata) {
                let conn = self.db.read(None).await?;
                own = customers::of_user(&*conn, user)
                    .await?
                    .and_then(|row| row.get::<_, Option<String>>("currency"))
                    .map(|c| c.trim().to_owned());
            }
            Some(own.unwrap_or_else(|| self.currency_default.clone()))
        };
        self.catalog.list(currency.as_deref(), request.page_size, &request.page_token).await
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        Ok(Response::new(self.core.list_plans(&metadata, message).await?))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let id = uuid("plan_id", &request.get_ref().plan_id)?;
        Ok(Response::new(pb::GetPlanResponse { plan: Some(self.core.catalog.get(id).await?) }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        Ok(Response::new(self.core.get_customer(&metadata, message).await?))
    }

    async fn add_payment_method(
        &self,
        request: Request<pb::AddPaymentMethodRequest>,
    ) -> Result<Response<pb::AddPaymentMethodResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let (response, replayed) = self.core.add_payment_method(&metadata, message).await?;
        Ok(respond(response, replayed))
    }

    async fn create_subscription(
        &self,
        _: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        Err(not_yet("CreateSubscription"))
    }

    async fn get_subscription(
        &self,
        _: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        Err(not_yet("GetSubscription"))
    }

    async fn list_subscriptions(
        &self,
        _: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        Err(not_yet("ListSubscriptions"))
    }

    async fn change_plan(
        &self,
        _: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::ChangePlanResponse>, Status> {
        Err(not_yet("ChangePlan"))
    }

    async fn cancel_subscription(
        &self,
        _: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::CancelSubscriptionResponse>, Status> {
        Err(not_yet("CancelSubscription"))
    }

    async fn list_invoices(
        &self,
        _: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        Err(not_yet("ListInvoices"))
    }

    async fn get_invoice(
        &self,
        _: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::GetInvoiceResponse>, Status> {
        Err(not_yet("GetInvoice"))
    }

    async fn pay_invoice(
        &self,
        _: Request<pb::PayInvoiceRequest>,
    ) -> Result<Response<pb::PayInvoiceResponse>, Status> {
        Err(not_yet("PayInvoice"))
    }

    async fn record_usage(
        &self,
        _: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        Err(not_yet("RecordUsage"))
    }

    async fn list_ledger_entries(
        &self,
        _: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        Err(not_yet("ListLedgerEntries"))
    }
}
