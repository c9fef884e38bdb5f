-- Viewer tokens (issue 15): each tenant's viewer key generation. The key itself is derived
-- from the token pepper and never stored; moving the generation on revokes every viewer
-- token of the tenant at once. A tenant without a row is at generation 1.
CREATE TABLE viewer_keys (
    tenant      text        PRIMARY KEY,
    generation  bigint      NOT NULL DEFAULT 1 CHECK (generation >= 1),
    rotated_at  timestamptz NOT NULL DEFAULT now(),
    rotated_by  text
);

-- The random root of the viewer keys, mixed with the configured pepper: without it a viewer
-- key would be a function of the tenant's name and the pepper alone, and an unset pepper
-- would let anyone who read this code mint viewer tokens.
INSERT INTO server_keys (name, secret)
VALUES ('viewer_tokens', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
