-- Who sent each quarantined record, and how its bytes are encoded.
--
-- token_id, token_tenant: the ingest token of the request (NULL when it came without one).
-- A replay applies the ingest's tenant rule with them: a record naming another tenant than
-- its token's stays in quarantine, one naming none gets the token's. Without them, a record
-- the ingest could not decode (nested too deep) would be stored, once replayed, in whichever
-- tenant it names.
--
-- record_encoding: what `record` holds. 'protobuf': an opentelemetry.proto.logs.v1.LogRecord
-- (every row before this migration). 'json': the record's OTLP/JSON object, re-serialized,
-- for a record that came as JSON and could not be decoded (it has no protobuf form).
ALTER TABLE rejects
    ADD COLUMN token_id         text,
    ADD COLUMN token_tenant     text,
    ADD COLUMN record_encoding  text NOT NULL DEFAULT 'protobuf' CHECK (record_encoding IN ('protobuf', 'json'));
