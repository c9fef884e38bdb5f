-- Indexes for the per-object history with related objects and for the filters admins use
-- (issue 12; core/query.py builds the conditions these serve, in the same expressions).
--
-- Created on the partitioned table, so every monthly partition, present and future, gets
-- them. On a large existing trail this takes a while and blocks writes to each partition as
-- it is indexed: run `otaudit migrate` in a quiet hour (collectors buffer and retry meanwhile).

-- target_type / target_id match the target OR any related object: the related side is
-- `doc->'related' @> '[{"type": T, "id": I}]'`, answered by this index (jsonb_path_ops
-- hashes each path with its value: small, and exactly what containment needs).
CREATE INDEX events_related ON events USING gin ((doc -> 'related') jsonb_path_ops);

-- q's details.KEY:VALUE (equality): `doc->'details' @> '{"KEY": VALUE}'`.
CREATE INDEX events_details ON events USING gin ((doc -> 'details') jsonb_path_ops);

-- q's target_name:VALUE and target_name:PREFIX*: equality and a byte-wise range on the
-- target's name within the tenant (text_pattern_ops: the range is right whatever the collation).
CREATE INDEX events_tenant_target_name ON events (tenant, (doc #>> '{target,name}') text_pattern_ops)
    WHERE doc #>> '{target,name}' IS NOT NULL;
