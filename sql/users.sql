-- Buyers. A host application with users of its own can create one dropstock user per account and keep
-- the mapping; every hold and purchase names the buyer by id.

-- create_user: register a buyer under a unique, non-empty name (at most 64 characters, trimmed).
CREATE FUNCTION create_user(username text)
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
    INSERT INTO dropstock.users AS u (username) VALUES (clean)
    ON CONFLICT ON CONSTRAINT users_username_key DO NOTHING
    RETURNING u.* INTO buyer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'username "%" is already taken', clean
              USING ERRCODE = 'DS040', HINT = 'Choose another username.';
    END IF;
    RETURN buyer;
END
$$;
