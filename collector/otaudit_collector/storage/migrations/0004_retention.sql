-- Retention (storage/retention.py): what each tenant's plan no longer keeps is deleted.

-- The dedup keys of a month whose partition is dropped are deleted by time range.
CREATE INDEX event_ids_occurred_at ON event_ids (occurred_at);

-- One row per retention run that changes something (dry runs are not recorded). A run
-- whose finished_at stays null stopped without finishing (the process died).
CREATE TABLE retention_runs (
    id                  bigserial   PRIMARY KEY,
    trigger             text        NOT NULL CHECK (trigger IN ('schedule', 'command')),
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    partitions_dropped  text[]      NOT NULL DEFAULT '{}',
    rows_deleted        bigint      NOT NULL DEFAULT 0,   -- events deleted, in batches and with the dropped partitions
    error               text                              -- why the run failed or stopped early; null when it completed
);
CREATE INDEX retention_runs_started ON retention_runs (started_at DESC);
