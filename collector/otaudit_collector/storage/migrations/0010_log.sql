-- The tamper-evident log (storage/log.py): each tenant's events, in seq order, are the
-- leaves of an RFC 6962 Merkle tree (leaf index = seq - 1), extended in the commit that
-- assigns seq. Its hashes are kept as C2SP tlog-tiles, its signed checkpoints are kept.

-- The salts of an event's personal values (otaudit_verify.entry): {pointer: {"salt": b64}},
-- or {pointer: {"commitment": b64}} once a value is erased. NULL: nothing sealed (an event
-- stored before this migration, until the log catches up with it).
ALTER TABLE events ADD COLUMN seals jsonb;

-- How many of the tenant's events are leaves of its tree: last_seq when the log is on and
-- caught up. Changed only under the row's lock, like last_seq.
ALTER TABLE tenant_seq ADD COLUMN log_size bigint NOT NULL DEFAULT 0;

-- One row per tile (C2SP tlog-tiles, height 8): the hashes at tree level 8 * level, tile
-- index idx, as 32-byte hashes one after the other. A partial tile grows in place: its
-- first W hashes never change, so the partial tile of width W is a prefix of the row.
CREATE TABLE log_tiles (
    tenant  text     NOT NULL,
    level   smallint NOT NULL,
    idx     bigint   NOT NULL,
    hashes  bytea    NOT NULL CHECK (length(hashes) % 32 = 0 AND length(hashes) BETWEEN 32 AND 8192),
    PRIMARY KEY (tenant, level, idx)
);

-- Signed checkpoints (C2SP tlog-checkpoint in a C2SP signed-note), kept for good.
CREATE TABLE log_checkpoints (
    tenant      text        NOT NULL,
    size        bigint      NOT NULL CHECK (size > 0),
    root        bytea       NOT NULL CHECK (length(root) = 32),
    note        text        NOT NULL,   -- the signed note, verbatim
    key         text        NOT NULL,   -- the verifier key that signed it (vkey)
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, size)
);
CREATE INDEX log_checkpoints_latest ON log_checkpoints (tenant, size DESC);

-- Which events retention removed: the leaves stay in the tree, their rows are gone.
CREATE TABLE log_pruned (
    run_id  bigint         NOT NULL REFERENCES retention_runs (id),
    tenant  text           NOT NULL,
    seqs    int8multirange NOT NULL,
    PRIMARY KEY (run_id, tenant)
);
CREATE INDEX log_pruned_tenant ON log_pruned (tenant);

-- Export jobs may also write verifiable bundles (storage/bundles.py).
ALTER TABLE export_jobs DROP CONSTRAINT export_jobs_format_check;
ALTER TABLE export_jobs ADD CONSTRAINT export_jobs_format_check
    CHECK (format IN ('csv', 'ndjson', 'json', 'xlsx', 'bundle'));
