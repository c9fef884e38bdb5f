-- Streams (issue 14): each tenant's trail delivered, as it grows, to a webhook or a folder.
--
-- One row per stream: what it delivers (the filter terms of GET /v1/events, limited at
-- delivery time by the tenant's plan), where (kind and non-secret settings; the secret
-- encrypted, core/streams.py), and how far: `cursor` is the last seq delivered (events the
-- filter or the plan leave out are passed over too). Delivery runs under a lease, like an
-- export job's: one collector at a time, taken over once the lease runs out.
CREATE TABLE streams (
    tenant           text        NOT NULL,
    id               text        NOT NULL,
    name             text        NOT NULL,
    format           text        NOT NULL DEFAULT 'otaudit' CHECK (format IN ('otaudit')),
    filter           jsonb       NOT NULL DEFAULT '{}',  -- {"category": [...], "q": [...], ...}, as export jobs store theirs
    kind             text        NOT NULL CHECK (kind IN ('webhook', 'file')),
    settings         jsonb       NOT NULL DEFAULT '{}',  -- non-secret: url, folder, rotation
    secret           bytea,                              -- AES-GCM ciphertext of the destination's secret; NULL: none
    state            text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused')),
    declared         boolean     NOT NULL DEFAULT false, -- from the configuration (streams.declared): not changed by the API
    version          integer     NOT NULL DEFAULT 1,     -- bumped by every change: the delivering collector starts over
    cursor           bigint      NOT NULL,               -- the last seq delivered (or passed over)
    lease_owner      text,
    lease_until      timestamptz,
    delivered        bigint      NOT NULL DEFAULT 0,     -- records the destination took
    failed           bigint      NOT NULL DEFAULT 0,     -- delivery attempts that failed
    attempts         integer     NOT NULL DEFAULT 0,     -- failed attempts in a row, 0 once a batch arrives
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_success_at  timestamptz,
    last_error       text,                               -- the receiver's own words, never a secret
    last_error_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text,                               -- the token id, or 'config'
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);
-- Claiming: active streams whose time has come, lease free or run out.
CREATE INDEX streams_due ON streams (next_attempt_at) WHERE state = 'active';

-- The key of the destinations' secrets, mixed with the configured pepper (neither alone decrypts).
INSERT INTO server_keys (name, secret)
VALUES ('stream_secrets', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
