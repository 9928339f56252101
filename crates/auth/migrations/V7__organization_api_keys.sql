-- API keys that belong to an organization: they act for it, bounded by
-- their maker's role there (tenx_common::authn::ORG_KEY_SCOPES), and
-- are revoked when the maker leaves, is removed, or gets a role that no
-- longer holds one of their scopes, and (those made without a second
-- factor) when the organization starts requiring one. Deleting the
-- organization revokes them first (so the revocation is published), then
-- takes them with it.
ALTER TABLE api_keys
    ADD COLUMN org_id uuid REFERENCES organizations (id) ON DELETE CASCADE,
    -- The session that made it had shown a second factor.
    ADD COLUMN made_with_mfa boolean NOT NULL DEFAULT false;
CREATE INDEX api_keys_org ON api_keys (org_id, user_id) WHERE org_id IS NOT NULL AND revoked_at IS NULL;
