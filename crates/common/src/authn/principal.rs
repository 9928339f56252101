//! The verified caller a handler is given.

use uuid::Uuid;

/// Who is calling, as verified by [`super::AuthnLayer`]; found in the
/// request's extensions (see [`principal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user's session: an access token auth issued at login.
    User {
        user_id: Uuid,
        session_id: Uuid,
        /// Roles auth stored for the user (`admin`), carried in the token.
        roles: Vec<String>,
        /// When the session last authenticated (unix seconds; the token's
        /// `auth_time`): its login or its last reauthentication. 0 when
        /// the token does not say (never recent).
        auth_time: u64,
        /// That authentication included a second factor (the token's
        /// `amr` holds `otp`).
        mfa: bool,
        /// The session's active organization and the caller's role in
        /// it (`org`, `org_role`); `None` when none is active.
        org: Option<super::OrgMembership>,
        /// The token's grant (`grt`): revoked when the organization or
        /// role it carries stops being true, so the token stops working
        /// everywhere while its session lives on (Refresh gets the truth).
        grant: Option<Uuid>,
    },
    /// One of a user's API keys, limited to its scopes.
    ApiKey {
        /// Who created it.
        user_id: Uuid,
        key_id: Uuid,
        scopes: Vec<String>,
        /// An organization's key: the organization it acts for and its
        /// creator's role there (which bounds its scopes). `None` for a
        /// personal key.
        org: Option<super::OrgMembership>,
    },
    /// A tenx service or operator tool, with a service token from auth.
    Service { name: String },
}

/// The role that makes a user an operator.
pub const ADMIN_ROLE: &str = "admin";

/// The service clients that are operators: operator tools and backends
/// (RecordUsage, Send, webhook administration). The platform's own
/// services are not: a compromised gateway, which faces the internet,
/// must not be able to mail anyone or read the ledger.
pub const OPERATOR_SERVICES: &[&str] = &["operator"];

impl Principal {
    /// The user a session or API key belongs to; `None` for a service.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Self::User { user_id, .. } | Self::ApiKey { user_id, .. } => Some(*user_id),
            Self::Service { .. } => None,
        }
    }

    /// The organization the call acts for: a session's active one, or an
    /// organization's API key's.
    pub fn org(&self) -> Option<super::OrgMembership> {
        match self {
            Self::User { org, .. } | Self::ApiKey { org, .. } => *org,
            Self::Service { .. } => None,
        }
    }

    /// A user's session whose token carries the `admin` role.
    pub fn is_admin(&self) -> bool {
        matches!(self, Self::User { roles, .. } if roles.iter().any(|r| r == ADMIN_ROLE))
    }

    /// An admin, or an operator service client ([`OPERATOR_SERVICES`]):
    /// may call the operator RPCs.
    pub fn is_operator(&self) -> bool {
        self.is_admin()
            || matches!(self, Self::Service { name } if OPERATOR_SERVICES.contains(&name.as_str()))
    }

    /// Whom rate limits count against: a user (all their sessions and API
    /// keys share one budget, so minting keys buys no extra requests), or
    /// a service. In two parts, `user:` and the id (spelled into `buffer`)
    /// or `service:` and the name, so a key can be joined on the stack
    /// ([`crate::joined`]).
    pub fn subject_parts<'a>(&'a self, buffer: &'a mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> [&'a str; 2] {
        match self {
            Self::User { user_id, .. } | Self::ApiKey { user_id, .. } => {
                ["user:", user_id.hyphenated().encode_lower(buffer)]
            }
            Self::Service { name } => ["service:", name],
        }
    }
}

/// The principal [`super::AuthnLayer`] verified for this call; `None` on an
/// RPC open to anyone that was called without a credential.
pub fn principal(extensions: &http::Extensions) -> Option<&Principal> {
    extensions.get::<Principal>()
}
