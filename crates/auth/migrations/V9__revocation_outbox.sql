-- Revocations committed but perhaps not yet published to Redis. A row is
-- written by these triggers in the revoking transaction itself, so it
-- exists exactly when the revocation committed. The instance that revoked
-- publishes at once as before; every auth instance also publishes what is
-- here each second and deletes it (DenyList::publish_pending). So an
-- instance that dies, or whose caller goes away, between the commit and
-- its publish leaves nothing valid that was revoked, and a session or key
-- revoked by hand (an UPDATE in psql) reaches every service too. Rows
-- deleted by hand while live are not covered: revoke, then delete.
--
-- The functions keep the search path of this migration, so they find the
-- table whatever search path the revoking session has.
--
-- Members are spelled as tenx_common::authn::Revocations spells them:
-- `session:<uuid>`, `grant:<uuid>`, `api_key:<hex sha-256 of the secret>`.
CREATE TABLE revocation_outbox (
    id          bigserial   PRIMARY KEY,
    member      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- A session revoked ends its tokens; a session given a new grant ends the
-- tokens of its old one (a role or organization it no longer acts with).
CREATE FUNCTION session_revocations() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
        INSERT INTO revocation_outbox (member) VALUES ('session:' || NEW.id::text);
    END IF;
    IF OLD.grant_id IS DISTINCT FROM NEW.grant_id THEN
        INSERT INTO revocation_outbox (member) VALUES ('grant:' || OLD.grant_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER session_revocations AFTER UPDATE OF revoked_at, grant_id ON sessions
    FOR EACH ROW EXECUTE FUNCTION session_revocations();

CREATE FUNCTION api_key_revocations() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
        INSERT INTO revocation_outbox (member) VALUES ('api_key:' || encode(NEW.secret_hash, 'hex'));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER api_key_revocations AFTER UPDATE OF revoked_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_key_revocations();
