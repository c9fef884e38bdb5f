-- Who may read what: tenants with their plan, and the tokens that act for them.

-- A tenant's plan (config "plans"). A tenant first seen at ingest gets the configured
-- default plan in the same transaction as its first events; `otaudit tenant set` changes it.
CREATE TABLE tenants (
    tenant      text        PRIMARY KEY,
    plan        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- API and ingest tokens. The secret is never stored: only its HMAC-SHA256 under the
-- configured pepper. `id` is the token's public part, shown by `otaudit token list`.
CREATE TABLE tokens (
    id            text        PRIMARY KEY,
    tenant        text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('admin', 'auditor', 'ingest')),
    name          text        NOT NULL,
    secret_hash   bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX tokens_tenant ON tokens (tenant);
