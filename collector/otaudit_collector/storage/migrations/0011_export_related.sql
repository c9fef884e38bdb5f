-- CSV and xlsx exports (issue 12): a `related` column, and an added value that reads as added.
--
-- The related objects of an event (`audit.related`), one line per object in the event's order:
-- "type:id", then " (name)" when the object has a non-empty name. Events without related
-- objects get an empty cell: STRICT, so PostgreSQL does not even call it for them (doc->'related'
-- is NULL). core/export.py wraps it in otaudit_csv_cell, like every text cell.
CREATE FUNCTION otaudit_csv_related(related jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(
        (r ->> 'type') || ':' || (r ->> 'id')
            || CASE WHEN coalesce(r ->> 'name', '') <> '' THEN ' (' || (r ->> 'name') || ')' ELSE '' END,
        E'\n' ORDER BY n)
    FROM jsonb_array_elements(CASE jsonb_typeof(related) WHEN 'array' THEN related ELSE '[]' END)
         WITH ORDINALITY AS t(r, n)
    WHERE jsonb_typeof(r) = 'object'
$$;

-- The changes, one line per field, "field: old -> new", as in 0003, but a value that is JSON null
-- (an add's old value, as the SDK's changes(None, after) sends it; a removal's new value) reads
-- "(none)" instead of nothing. A value left out still reads "(withheld)": the emitter did not
-- record it (a secret).
CREATE OR REPLACE FUNCTION otaudit_csv_changes(changes jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT string_agg(
        (c ->> 'field') || ': '
            || CASE WHEN NOT c ? 'old' THEN '(withheld)'
                    WHEN jsonb_typeof(c -> 'old') = 'null' THEN '(none)'
                    ELSE otaudit_csv_value(c -> 'old') END
            || ' -> '
            || CASE WHEN NOT c ? 'new' THEN '(withheld)'
                    WHEN jsonb_typeof(c -> 'new') = 'null' THEN '(none)'
                    ELSE otaudit_csv_value(c -> 'new') END,
        E'\n' ORDER BY n)
    FROM jsonb_array_elements(CASE jsonb_typeof(changes) WHEN 'array' THEN changes ELSE '[]' END)
         WITH ORDINALITY AS t(c, n)
$$;
