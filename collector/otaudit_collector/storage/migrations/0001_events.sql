-- The audit trail: events partitioned by month, the dedup index, per-tenant commit
-- sequences, and the quarantine of rejected records.

CREATE TABLE events (
    tenant       text        NOT NULL,
    seq          bigint      NOT NULL,   -- per-tenant commit sequence: gap-free, in commit order
    id           text        NOT NULL,   -- log.record.uid, or an id derived from the record
    occurred_at  timestamptz NOT NULL,   -- when it happened (the received time when the emitter's clock was implausible)
    received_at  timestamptz NOT NULL,   -- when the collector received it
    category     text        NOT NULL,
    event        text        NOT NULL,
    outcome      text        NOT NULL,
    actor_type   text,
    actor_id     text,
    actor_email  text,
    target_type  text,
    target_id    text,
    flags        text[]      NOT NULL DEFAULT '{}',
    doc          jsonb       NOT NULL    -- the normalized event (contract.md)
) PARTITION BY RANGE (occurred_at);

-- Newest first, by tenant, optionally by category: the admin list and its keyset cursor.
CREATE INDEX events_tenant_time ON events (tenant, occurred_at DESC, seq DESC);
CREATE INDEX events_tenant_category_time ON events (tenant, category, occurred_at DESC, seq DESC);
-- The feed: commit order per tenant.
CREATE INDEX events_tenant_seq ON events (tenant, seq);
-- Who did it, and the per-object history.
CREATE INDEX events_tenant_actor ON events (tenant, actor_id, occurred_at DESC) WHERE actor_id IS NOT NULL;
CREATE INDEX events_tenant_target ON events (tenant, target_type, target_id, occurred_at DESC) WHERE target_id IS NOT NULL;

-- One row per stored event: the dedup key (a retried request stores nothing twice, even
-- when its events were filed under the received time) and where to find the event.
CREATE TABLE event_ids (
    tenant       text        NOT NULL,
    id           text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The last commit sequence number given to each tenant. Its row lock, held until the
-- writing transaction commits, orders commits per tenant across collector processes.
CREATE TABLE tenant_seq (
    tenant    text   PRIMARY KEY,
    last_seq  bigint NOT NULL
);

-- Records that failed normalization or their catalog: kept with the reasons and the
-- original bytes so that they can be replayed once the catalog or the emitter is fixed.
CREATE TABLE rejects (
    id                 bigserial   PRIMARY KEY,
    received_at        timestamptz NOT NULL DEFAULT now(),
    tenant             text,
    category           text,
    event              text,
    reasons            text[]      NOT NULL,
    resource           bytea       NOT NULL,  -- opentelemetry.proto.resource.v1.Resource
    record             bytea       NOT NULL,  -- opentelemetry.proto.logs.v1.LogRecord
    fingerprint        bytea       NOT NULL UNIQUE,
    replayed_at        timestamptz,
    replayed_event_id  text
);
CREATE INDEX rejects_open ON rejects (received_at) WHERE replayed_at IS NULL;

-- Create the monthly partition holding a timestamp, if it is missing. Safe to call
-- concurrently from several collectors.
CREATE FUNCTION otaudit_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text := 'events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                name, month_start, month_start + interval '1 month');
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;  -- another collector created it first
        END;
    END IF;
    RETURN name;
END;
$$;
