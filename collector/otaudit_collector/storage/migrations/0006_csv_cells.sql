-- CSV cells a spreadsheet cannot run, after what it strips: 0003's otaudit_csv_cell looked at
-- the first character only, so " =cmd", a no-break or zero-width space, a BOM, a newline or
-- a fullwidth ＝＋－＠ before the formula passed untouched.
--
-- A text starting with a tab or a carriage return, or starting with = + - @ (or their
-- fullwidth forms U+FF1D U+FF0B U+FF0D U+FF20) once the characters a spreadsheet strips or
-- does not show are skipped (control characters, spaces incl. U+00A0 U+1680 U+2000-U+200F
-- U+2028-U+202F U+205F-U+206F U+3000, the soft hyphen, U+180E and the BOM U+FEFF), gets a
-- leading apostrophe before the whole original value. core/export.py's spreadsheet_cell is
-- the same rule in Python; the tests hold the two equal for every character.
-- (PostgreSQL text holds no U+0000, so the class starts at U+0001.)
CREATE OR REPLACE FUNCTION otaudit_csv_cell(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN v ~ '^([\t\r]|[\u0001-\u0020\u007F-\u00A0\u00AD\u1680\u180E\u2000-\u200F\u2028-\u202F\u205F-\u206F\u3000\uFEFF]*[-=+@\uFF1D\uFF0B\uFF0D\uFF20])'
        THEN '''' || v
        ELSE v
    END
$$;
