-- Every table keyed and unique by tenant first (issue 16), so that an existing distributed
-- engine (Citus) can spread them over nodes by tenant: a primary key, a unique index or a
-- foreign key between such tables that does not lead with tenant cannot be enforced shard by
-- shard. storage/distribution.py says which tables are distributed by tenant and which are
-- small global reference tables; tests/storage/test_tenant_keys.py holds the schema to it.
-- Most tables were tenant-first already; these four were not. Every row is kept.

-- rejects: keyed (tenant, id), a fingerprint quarantined once per tenant. The tenant of a
-- record that named none (it could not be read, and came without an ingest token) was NULL:
-- it is now '' (a tenant is never empty: normalization refuses one), which `otaudit rejects
-- list` still shows as none. A fingerprint hashes the record's bytes and its resource, which
-- name the tenant (a token's tenant is added to the resource of a record that names none), so
-- a record and its retries are still kept once; only the same bytes filed under two tenants
-- (ingest.default_tenant changed in between) are now kept once for each tenant, not dropped.
UPDATE rejects SET tenant = '' WHERE tenant IS NULL;
ALTER TABLE rejects ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE rejects
    DROP CONSTRAINT rejects_pkey,
    ADD CONSTRAINT rejects_pkey PRIMARY KEY (tenant, id),
    DROP CONSTRAINT rejects_fingerprint_key,
    ADD CONSTRAINT rejects_fingerprint_key UNIQUE (tenant, fingerprint);
-- `otaudit rejects list` and `replay` go by id, across tenants (the ids stay unique: one sequence).
CREATE INDEX rejects_id ON rejects (id);

-- export_jobs: keyed (tenant, id). Its file's chunks carry the tenant too, so that a job and
-- its file stay on one node and the cascade deletes them there.
ALTER TABLE export_chunks ADD COLUMN tenant text;
UPDATE export_chunks c SET tenant = j.tenant FROM export_jobs j WHERE j.id = c.job_id;
ALTER TABLE export_chunks ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE export_chunks DROP CONSTRAINT export_chunks_job_id_fkey, DROP CONSTRAINT export_chunks_pkey;
ALTER TABLE export_jobs DROP CONSTRAINT export_jobs_pkey, ADD CONSTRAINT export_jobs_pkey PRIMARY KEY (tenant, id);
ALTER TABLE export_chunks
    ADD CONSTRAINT export_chunks_pkey PRIMARY KEY (tenant, job_id, n),
    ADD CONSTRAINT export_chunks_job_fkey FOREIGN KEY (tenant, job_id) REFERENCES export_jobs (tenant, id) ON DELETE CASCADE;
-- A download URL names the job, not its tenant (the signature covers the id): the one lookup
-- by id alone, done once per download. Ids stay random (80 bits), so one id is one job.
CREATE INDEX export_jobs_id ON export_jobs (id);

-- log_pruned: keyed (tenant, run_id); its key's index replaces log_pruned_tenant. Its
-- foreign key to retention_runs (a reference table) stays as it is.
ALTER TABLE log_pruned DROP CONSTRAINT log_pruned_pkey, ADD CONSTRAINT log_pruned_pkey PRIMARY KEY (tenant, run_id);
DROP INDEX log_pruned_tenant;
