-- Runs last in CREATE EXTENSION: while the library is preloaded, its worker serves one database
-- (dropstock.database), and the extension belongs there and nowhere else.
DO $$
BEGIN
    IF dropstock.worker_preloaded() AND current_database() <> current_setting('dropstock.database') THEN
        RAISE EXCEPTION 'dropstock can only be created in database "%"', current_setting('dropstock.database')
              USING ERRCODE = 'object_not_in_prerequisite_state',
                    DETAIL = format('The dropstock background worker serves the database named by dropstock.database, which is "%s", not "%s".',
                                    current_setting('dropstock.database'), current_database()),
                    HINT = format('Create the extension in "%s", or set dropstock.database = ''%s'' in postgresql.conf and restart the server.',
                                  current_setting('dropstock.database'), current_database());
    END IF;
END
$$;
