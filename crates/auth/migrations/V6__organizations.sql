-- Organizations, their members and roles, and their audit log; the
-- session's active organization and the grant its tokens carry; and an
-- account-wide count of wrong second-factor codes.

-- Wrong codes since the last right one, from any client: at
-- mfa.max_failed_codes TOTP codes are refused until a password reset
-- (whoever guesses them has the password).
ALTER TABLE mfa_totp ADD COLUMN failed_codes integer NOT NULL DEFAULT 0;

CREATE TABLE organizations (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    -- Members must sign in with a second factor to act in it.
    require_mfa boolean     NOT NULL DEFAULT false,
    created_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One role per member; what each role may do is in tenx_common::authn::orgs.
CREATE TABLE org_members (
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'billing', 'member')),
    joined_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_members_user ON org_members (user_id);

-- Who did what in an organization, when, from which session.
CREATE TABLE org_audit (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id            uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    actor_user_id     uuid,
    actor_session_id  uuid,
    action            text        NOT NULL,
    target            text        NOT NULL DEFAULT '',
    detail            text        NOT NULL DEFAULT '',
    at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX org_audit_org ON org_audit (org_id, id DESC);

-- The organization a session acts in, and its grant: the id its access
-- tokens carry (`grt`), replaced (and the old one revoked) whenever the
-- organization or role those tokens carry stops being true.
ALTER TABLE sessions
    ADD COLUMN active_org_id uuid REFERENCES organizations (id) ON DELETE SET NULL,
    ADD COLUMN grant_id      uuid NOT NULL DEFAULT gen_random_uuid();
CREATE INDEX sessions_active_org ON sessions (active_org_id, user_id) WHERE active_org_id IS NOT NULL;
CREATE UNIQUE INDEX sessions_grant ON sessions (grant_id);

-- Invitations by email; the token stored hashed, single use, expiring.
-- At most one pending per organization and address (a new one replaces it).
CREATE TABLE org_invitations (
    id           uuid        PRIMARY KEY,
    org_id       uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email        text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('owner', 'admin', 'billing', 'member')),
    token_hash   bytea       NOT NULL UNIQUE,
    invited_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    -- Set once, when it stops being pending.
    closed_at    timestamptz,
    outcome      text        CHECK (outcome IN ('accepted', 'declined', 'revoked', 'replaced')),
    accepted_by  uuid        REFERENCES users (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX org_invitations_pending ON org_invitations (org_id, email) WHERE closed_at IS NULL;
