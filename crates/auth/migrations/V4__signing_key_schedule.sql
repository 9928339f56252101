-- Scheduled signing-key rotation with overlap: a key is published in the
-- JWKS from its creation but signs only from `activates_at`, so every
-- verifier has fetched it before the first token it signed arrives. The
-- key it replaces is retired at that moment and stays published until
-- its last tokens have expired (as before).
ALTER TABLE signing_keys ADD COLUMN activates_at timestamptz;
UPDATE signing_keys SET activates_at = created_at;
ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL,
                         ALTER COLUMN activates_at SET DEFAULT now();
