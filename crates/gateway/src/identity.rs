//! Who is calling, verified at the edge by the same shared layer every
//! service runs (`tenx_common::authn`): a bearer JWT against auth's key
//! set, or an API key resolved through auth, then the revocation set and
//! the RPC's access rule. Whatever identity headers a client sends are
//! ignored; the client's credential itself travels on, and every service
//! behind verifies it again.

use tenx_common::authn::Principal;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    /// The credential as presented (the `authorization` header, shared
    /// with the request, not copied), forwarded to the upstream, which
    /// verifies it again.
    pub bearer: http::HeaderValue,
}

impl Identity {
    /// The user behind the credential (as a string, for caches keyed by it).
    pub fn user_id(&self) -> Option<String> {
        self.principal.user_id().map(|u| u.to_string())
    }
}
