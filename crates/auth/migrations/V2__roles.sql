-- Roles a user holds (today only `admin`: the operator RPCs). Carried in
-- the access tokens auth issues, so every service can check them without
-- asking auth; granted with `tenx-auth grant-role`.
ALTER TABLE users ADD COLUMN roles text[] NOT NULL DEFAULT '{}';
