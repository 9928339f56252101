//! Organization roles and what each may do: the one table every service
//! enforces, from the membership an access token carries (`org`,
//! `org_role`). An RPC names the permission it needs in its access rule
//! (`permission: "org.members.manage"`); [`super::authorize`] checks it
//! before the handler runs.

use uuid::Uuid;

/// A member's role in an organization, most powerful first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrgRole {
    Owner,
    Admin,
    Billing,
    Member,
}

impl OrgRole {
    pub const ALL: [OrgRole; 4] = [OrgRole::Owner, OrgRole::Admin, OrgRole::Billing, OrgRole::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Billing => "billing",
            Self::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether this role holds `permission` (an unknown permission: no).
    pub fn permits(self, permission: &str) -> bool {
        PERMISSIONS.iter().any(|(name, roles, _)| *name == permission && roles.contains(&self))
    }
}

use OrgRole::{Admin, Billing, Member, Owner};

/// Every permission: its name, the roles that hold it, what it allows.
/// docs/services/auth.md and `proto/tenx/auth/v1/organizations.proto`
/// show this table; a test keeps them in step.
pub const PERMISSIONS: &[(&str, &[OrgRole], &str)] = &[
    ("org.read", &[Owner, Admin, Billing, Member], "see the organization and its members; leave it"),
    ("org.manage", &[Owner, Admin], "rename the organization"),
    ("org.delete", &[Owner], "delete the organization (its subscriptions end)"),
    ("org.members.manage", &[Owner, Admin], "invite, change roles, remove members"),
    ("org.audit.read", &[Owner, Admin], "read the audit log"),
    ("org.billing.read", &[Owner, Admin, Billing], "see subscriptions, invoices and payment methods"),
    ("org.billing.manage", &[Owner, Billing], "subscribe, pay, change plans, manage payment methods"),
    ("org.api_keys.manage", &[Owner, Admin], "see and revoke the organization's API keys"),
];

/// The scopes an organization's API key may hold, and the permission its
/// creator's role needs for each: a key never does more than the role of
/// the member who made it. Other scopes act for a person (their inbox,
/// their profile) and are not an organization's to hold.
pub const ORG_KEY_SCOPES: &[(&str, &str)] =
    &[("billing:read", "org.billing.read"), ("billing:write", "org.billing.manage")];

/// Why a role may not give an organization's key a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRefusal {
    /// The scope acts for a person (an inbox, a profile), never an organization.
    Personal(String),
    /// The role lacks the permission the scope needs.
    BeyondRole(String),
}

impl std::fmt::Display for ScopeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Personal(why) | Self::BeyondRole(why) => f.write_str(why),
        }
    }
}

/// Why `role` may not give an organization's key `scope`; `None` when it may.
pub fn org_key_scope_refusal(role: OrgRole, scope: &str) -> Option<ScopeRefusal> {
    match ORG_KEY_SCOPES.iter().find(|(s, _)| *s == scope) {
        None => Some(ScopeRefusal::Personal(format!(
            "{scope} acts for a person; an organization's key may hold only {}",
            ORG_KEY_SCOPES.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
        ))),
        Some((_, permission)) if !role.permits(permission) => Some(ScopeRefusal::BeyondRole(format!(
            "{scope} needs {permission}, which your role ({}) lacks",
            role.as_str()
        ))),
        Some(_) => None,
    }
}

/// The organization a session acts in, and the caller's role there, as
/// the access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrgMembership {
    pub org_id: Uuid,
    pub role: OrgRole,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_an_rpc_names_is_in_the_table_and_owners_hold_them_all() {
        for (path, rule) in tenx_proto::access::METHODS {
            if !rule.permission.is_empty() {
                assert!(
                    PERMISSIONS.iter().any(|(p, ..)| *p == rule.permission),
                    "{path}: {}",
                    rule.permission
                );
            }
        }
        assert!(PERMISSIONS.iter().all(|(p, ..)| Owner.permits(p)));
        assert!(!Member.permits("org.members.manage") && !Billing.permits("org.manage"));
        assert!(Billing.permits("org.billing.manage") && !Admin.permits("org.billing.manage"));
        assert!(!Owner.permits("no.such.permission"));
        for (scope, permission) in ORG_KEY_SCOPES {
            assert!(PERMISSIONS.iter().any(|(p, ..)| p == permission), "{scope}: {permission}");
            assert_eq!(org_key_scope_refusal(Owner, scope), None);
        }
        assert!(org_key_scope_refusal(Billing, "billing:write").is_none());
        assert!(org_key_scope_refusal(Admin, "billing:write").is_some_and(|m| matches!(
            m,
            ScopeRefusal::BeyondRole(_)
        )
            && m.to_string().contains("org.billing.manage")));
        assert!(org_key_scope_refusal(Member, "billing:read").is_some());
        assert!(org_key_scope_refusal(Owner, "notifications:read").is_some_and(|m| matches!(
            m,
            ScopeRefusal::Personal(_)
        )
            && m.to_string().contains("person")));
        for role in OrgRole::ALL {
            assert_eq!(OrgRole::parse(role.as_str()), Some(role));
        }
    }

    #[test]
    fn the_contracts_table_shows_the_same_grants() {
        let proto = include_str!("../../../../proto/tenx/auth/v1/organizations.proto");
        for (permission, roles, _) in PERMISSIONS {
            let row = proto
                .lines()
                .find(|l| l.trim_start_matches("// |").trim_start().starts_with(&format!("{permission} ")))
                .unwrap_or_else(|| panic!("{permission} is not in the proto's table"));
            let marks: Vec<bool> = row.split('|').skip(2).take(4).map(|cell| cell.contains('✓')).collect();
            let expected: Vec<bool> = OrgRole::ALL.iter().map(|r| roles.contains(r)).collect();
            assert_eq!(marks, expected, "{permission}");
        }
    }
}
