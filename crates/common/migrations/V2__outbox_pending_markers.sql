-- A pending event is a narrow marker row (partition, seq) beside its
-- outbox row, and publishing it deletes the marker. Setting
-- `published_at` instead rewrote the whole row (the payload with it)
-- with new entries in both unique indexes, because the pending index's
-- predicate named the column: the relay's most expensive statement, and
-- most of the outbox's WAL. A delete writes only the marker's tombstone.

DROP INDEX tenx_outbox_pending;

CREATE TABLE tenx_outbox_pending (
    partition  smallint NOT NULL,
    seq        bigint   NOT NULL,
    PRIMARY KEY (partition, seq)
);

INSERT INTO tenx_outbox_pending (partition, seq)
SELECT partition, seq FROM tenx_outbox WHERE published_at IS NULL;

-- Every inserted outbox row gets its marker in the same statement,
-- whoever inserts it (an older build of a service during a rolling
-- upgrade, a hand-written fix), so no row can be left unpublished for
-- want of one. Once per statement: one insert of all its markers. The
-- schema is written into the body, whatever the inserter's search_path:
-- a `SET search_path` clause on the function instead costs every
-- single-event transaction ≈ 25 µs more (a GUC saved and restored, the
-- cached plan revalidated).
DO $migration$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION tenx_outbox_mark_pending() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            INSERT INTO %I.tenx_outbox_pending (partition, seq) SELECT partition, seq FROM inserted;
            RETURN NULL;
        END
        $body$$f$, current_schema());
END
$migration$;

CREATE TRIGGER tenx_outbox_mark_pending AFTER INSERT ON tenx_outbox
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION tenx_outbox_mark_pending();

-- Published now means "has no marker". An older relay still running
-- during the upgrade fails on the missing column and retries until it is
-- replaced, instead of publishing every event again.
ALTER TABLE tenx_outbox DROP COLUMN published_at;
