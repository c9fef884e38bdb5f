-- Streams of OCSF events and CEF lines (issue 14) beside otaudit's own documents: the format
-- column that 0012 made for this, now taking 'ocsf' and 'cef'.
ALTER TABLE streams DROP CONSTRAINT streams_format_check;
ALTER TABLE streams ADD CONSTRAINT streams_format_check CHECK (format IN ('otaudit', 'ocsf', 'cef'));
