-- The email delivery log operators read (ListEmailDeliveries): newest
-- first (ids are time-ordered v7 UUIDs), by user or by status. An email
-- whose every attempt failed is now `failed` (pending → sent | failed;
-- failed → sent once redriven), so it can be found and sent again.
CREATE INDEX email_deliveries_user ON email_deliveries (user_id, id DESC);
CREATE INDEX email_deliveries_status ON email_deliveries (status, id DESC);
