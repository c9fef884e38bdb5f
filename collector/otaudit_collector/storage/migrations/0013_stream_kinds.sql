-- Streams to any OTLP endpoint and to syslog receivers (issue 14), beside webhooks and files.
ALTER TABLE streams DROP CONSTRAINT streams_kind_check;
ALTER TABLE streams ADD CONSTRAINT streams_kind_check CHECK (kind IN ('webhook', 'file', 'otlp', 'syslog'));
