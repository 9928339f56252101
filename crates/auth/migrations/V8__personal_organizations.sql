-- A personal account is an organization of one: every account has one
-- whose id is the account's own. Billing has keyed the customer of a user
-- by that id since its first migration, so each existing customer belongs
-- to its owner's personal organization without a row of billing's moving.
--
-- Only quick changes here (a column with a constant default and a
-- constraint not validated: existing rows are all `personal = false`),
-- so the locks this transaction takes on `organizations` are short.
-- Existing accounts get theirs from every auth instance's start, in
-- batches outside any migration (crate::personal::backfill), and any
-- account still without one (signed up by an instance of the previous
-- version during a rollout) gets it when it first lists or switches
-- organizations.
ALTER TABLE organizations ADD COLUMN personal boolean NOT NULL DEFAULT false;
ALTER TABLE organizations ADD CONSTRAINT organizations_personal_is_its_owners
    CHECK (NOT personal OR created_by IS NULL OR id = created_by) NOT VALID;

-- Whatever version of auth runs: a personal organization is never
-- deleted (it goes with its account) and never has a second member. The
-- previous version knows none of this, and deleting one would make billing
-- cancel its owner's own subscriptions.
CREATE FUNCTION personal_organization_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.personal THEN
        RAISE EXCEPTION 'a personal organization lasts as long as its account' USING ERRCODE = 'check_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER personal_organization_kept BEFORE DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION personal_organization_kept();

CREATE FUNCTION personal_organization_alone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id <> NEW.org_id AND EXISTS (SELECT 1 FROM organizations WHERE id = NEW.org_id AND personal) THEN
        RAISE EXCEPTION 'a personal organization has one member' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER personal_organization_alone BEFORE INSERT OR UPDATE ON org_members
    FOR EACH ROW EXECUTE FUNCTION personal_organization_alone();

-- One-off data changes done by the service in batches, once each.
CREATE TABLE backfills (
    name     text        PRIMARY KEY,
    done_at  timestamptz NOT NULL DEFAULT now()
);
