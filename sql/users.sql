-- Buyers. A host application with users of its own can create one dropstock user per account and keep
-- the mapping; every hold and purchase names the buyer by id.

-- create_user: register a buyer under a unique, non-empty name (at most 64 characters, trimmed). `id`
-- is the buyer's id when the caller chooses it (an existing client's fixed buyer id); NULL gives a new one.
CREATE FUNCTION create_user(username text, id uuid DEFAULT NULL)
RETURNS users
LANGUAGE plpgsql
AS $$
DECLARE
    clean text := btrim(create_user.username);
    buyer dropstock.users;
BEGIN
    -- A name must show something: invisible characters alone (zero-width spaces, joiners, byte-order
    -- marks) would list a buyer as a blank.
    IF clean IS NULL OR regexp_replace(clean, '[\s\u200B-\u200F\u2060-\u2064\uFEFF]', '', 'g') = '' THEN
        RAISE EXCEPTION 'username must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF clean ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'username must not contain control characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(clean) > 64 THEN
        RAISE EXCEPTION 'username must be at most 64 characters, got %', length(clean)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Either uniqueness (name or id) makes the insert do nothing, concurrent inserts included; which one
    -- it was is then read back (a conflicting row is committed by then, so this statement sees it).
    INSERT INTO dropstock.users AS u (id, username)
    VALUES (coalesce(create_user.id, gen_random_uuid()), clean)
    ON CONFLICT DO NOTHING
    RETURNING u.* INTO buyer;
    IF NOT FOUND THEN
        IF create_user.id IS NOT NULL AND EXISTS (SELECT 1 FROM dropstock.users AS t WHERE t.id = create_user.id) THEN
            RAISE EXCEPTION 'a buyer with id % already exists', create_user.id
                  USING ERRCODE = 'DS041', HINT = 'Choose another id, or use the existing buyer.';
        END IF;
        RAISE EXCEPTION 'username "%" is already taken', clean
              USING ERRCODE = 'DS040', HINT = 'Choose another username.';
    END IF;
    RETURN buyer;
END
$$;
