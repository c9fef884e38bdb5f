-- The human titles of the catalogs' events ("Role updated"), for exports: a CSV export is one
-- COPY inside PostgreSQL, so the title column must come from SQL. The collector writes the
-- titles of the catalogs it loads at start and on every reload (storage/titles.py); rows are
-- updated, never deleted, so events of a category no longer loaded keep their title.
CREATE TABLE IF NOT EXISTS catalog_titles (
    category    text        NOT NULL,
    event       text        NOT NULL,
    title       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, event)
);
