-- A personal account is an organization of one. Every user gets one
-- (sign-up makes it in the same transaction), whose id is the user's own:
-- billing has keyed the customer of a user by that id since its first
-- migration, so each existing customer now belongs to its owner's
-- personal organization without a row of billing's moving.
ALTER TABLE organizations ADD COLUMN personal boolean NOT NULL DEFAULT false;
ALTER TABLE organizations ADD CONSTRAINT organizations_personal_is_its_owners
    CHECK (NOT personal OR created_by IS NULL OR id = created_by);

-- Existing accounts: one INSERT ... SELECT each (at 10M users, minutes of
-- sequential writes inside the migration's transaction; nothing else
-- reads these rows until it commits).
INSERT INTO organizations (id, name, personal, created_by, created_at, updated_at)
SELECT id, 'Personal', true, id, created_at, created_at FROM users
ON CONFLICT (id) DO NOTHING;
INSERT INTO org_members (org_id, user_id, role, joined_at)
SELECT u.id, u.id, 'owner', u.created_at FROM users u
JOIN organizations o ON o.id = u.id AND o.personal
ON CONFLICT (org_id, user_id) DO NOTHING;
