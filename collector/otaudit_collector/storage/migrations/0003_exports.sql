-- Exports: the CSV cell functions the export query runs inside PostgreSQL, the export jobs
-- and their files, and when each token last opened an API session (for self-audit).

-- A CSV cell a spreadsheet cannot run: text starting with = + - @, a tab or a carriage
-- return gets a leading apostrophe (the OWASP advice for CSV injection).
CREATE FUNCTION otaudit_csv_cell(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN left(v, 1) IN ('=', '+', '-', '@', E'\t', E'\r') THEN '''' || v ELSE v END
$$;

-- A JSON value as a person reads it: a string without quotes, null as nothing, the rest as JSON.
CREATE FUNCTION otaudit_csv_value(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v) WHEN 'string' THEN v #>> '{}' WHEN 'null' THEN '' ELSE v::text END
$$;

-- The changes of an event, one line per field: "field: old -> new". A withheld value
-- (the SDK sends none for secrets) reads as "(withheld)".
CREATE FUNCTION otaudit_csv_changes(changes jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT string_agg(
        (c ->> 'field') || ': '
            || CASE WHEN c ? 'old' THEN otaudit_csv_value(c -> 'old') ELSE '(withheld)' END
            || ' -> '
            || CASE WHEN c ? 'new' THEN otaudit_csv_value(c -> 'new') ELSE '(withheld)' END,
        E'\n' ORDER BY n)
    FROM jsonb_array_elements(CASE jsonb_typeof(changes) WHEN 'array' THEN changes ELSE '[]' END)
         WITH ORDINALITY AS t(c, n)
$$;

-- One export job: what to export (the filters, the categories the plan allowed),
-- its progress, and whose lease it runs under. Any collector replica may run a queued job
-- or one whose lease ran out (its collector died); the file lands in export_chunks, so
-- every replica can serve the download, after a restart too.
CREATE TABLE export_jobs (
    id            text        PRIMARY KEY,
    tenant        text        NOT NULL,
    token_id      text        NOT NULL,
    client        jsonb       NOT NULL DEFAULT '{}',  -- where it was asked from (address, user agent), for the self-audit event
    format        text        NOT NULL CHECK (format IN ('csv', 'ndjson', 'json')),
    bom           boolean     NOT NULL DEFAULT false,
    filters       jsonb       NOT NULL,   -- the query parameters, since already clamped to the plan's window
    categories    text[],                 -- what the plan allowed when the job was made; NULL: every category
    state         text        NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    rows          bigint      NOT NULL DEFAULT 0,
    total         bigint,
    bytes         bigint      NOT NULL DEFAULT 0,
    attempts      integer     NOT NULL DEFAULT 0,
    error         text,
    owner         text,
    lease_until   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX export_jobs_todo ON export_jobs (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX export_jobs_tenant ON export_jobs (tenant, created_at DESC);

CREATE TABLE export_chunks (
    job_id  text    NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    n       integer NOT NULL,
    data    bytea   NOT NULL,
    PRIMARY KEY (job_id, n)
);

-- When the token last started an API session: a request after a longer pause starts a
-- new one, which is recorded as a site_access event.
ALTER TABLE tokens ADD COLUMN last_seen_at timestamptz;

-- Random keys every replica shares, made once here (gen_random_uuid draws from the
-- strong random source). The download URLs of export jobs are signed with this one and
-- the configured pepper, so a URL stays valid across replicas and restarts.
CREATE TABLE server_keys (
    name    text  PRIMARY KEY,
    secret  bytea NOT NULL
);
INSERT INTO server_keys (name, secret)
VALUES ('export_downloads', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
