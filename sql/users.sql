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
    IF clean IS NULL OR clean = '' THEN
        RAISE EXCEPTION 'username must not be empty' USING ERRCODE = 'invalid_parameter_value';
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
