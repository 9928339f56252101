-- The compose stack's database and the role the services use.
CREATE ROLE tenx LOGIN;
CREATE DATABASE tenx OWNER tenx;
