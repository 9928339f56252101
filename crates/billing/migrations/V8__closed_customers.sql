-- A customer whose owner is gone (a deleted organization): nothing new may
-- be bought on it (no card, no subscription); its subscriptions were ended
-- when it closed.
ALTER TABLE customers ADD COLUMN closed_at timestamptz;
