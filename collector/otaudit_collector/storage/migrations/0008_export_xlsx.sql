-- Export jobs may also write xlsx files (the CSV's rows as sheet rows, made in constant memory).
ALTER TABLE export_jobs DROP CONSTRAINT export_jobs_format_check;
ALTER TABLE export_jobs ADD CONSTRAINT export_jobs_format_check CHECK (format IN ('csv', 'ndjson', 'json', 'xlsx'));
