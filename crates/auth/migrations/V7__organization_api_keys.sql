-- API keys that belong to an organization: they act for it, bounded by
-- their creator's role there (tenx_common::authn::ORG_KEY_SCOPES), and
-- are revoked when the creator leaves, is removed, or gets a role that no
-- longer holds one of their scopes. Deleting the organization revokes
-- them first (so the revocation is published), then takes them with it.
ALTER TABLE api_keys ADD COLUMN org_id uuid REFERENCES organizations (id) ON DELETE CASCADE;
CREATE INDEX api_keys_org ON api_keys (org_id, user_id) WHERE org_id IS NOT NULL AND revoked_at IS NULL;
