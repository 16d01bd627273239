//! Buyers (sql/users.sql): `create_user`, with a new id or one the caller gives.

pgrx::extension_sql_file!("../../sql/users.sql", name = "users", requires = ["schema"]);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn create_user_trims_the_name_and_returns_the_row() {
        let name = text("SELECT username FROM dropstock.create_user('  ada  ')");
        assert_eq!(name, "ada");
    }

    #[pg_test]
    fn create_user_refuses_a_taken_name() {
        buyer("grace");
        assert_refused(
            "SELECT dropstock.create_user('grace')",
            "DS040",
            "already taken",
        );
    }

    #[pg_test]
    fn create_user_takes_a_given_id_and_refuses_one_in_use() {
        let id = "6b1f0000-0000-4000-8000-00000000a11c";
        let created = text(&format!(
            "SELECT id::text FROM dropstock.create_user('alice', '{id}')"
        ));
        assert_eq!(created, id);
        // The id is taken: its own code, whatever the name.
        assert_refused(
            &format!("SELECT dropstock.create_user('someone-else', '{id}')"),
            "DS041",
            "already exists",
        );
        // A free id with a taken name is the name's refusal.
        assert_refused(
            "SELECT dropstock.create_user('alice', '6b1f0000-0000-4000-8000-00000000b0b0')",
            "DS040",
            "already taken",
        );
        // NULL means "make one", as leaving it out does.
        let fresh = text("SELECT id::text FROM dropstock.create_user('bob', NULL)");
        assert_ne!(fresh, id);
    }

    #[pg_test]
    fn create_user_refuses_empty_invisible_null_and_overlong_names() {
        assert_refused(
            "SELECT dropstock.create_user('   ')",
            "22023",
            "must not be empty",
        );
        assert_refused(
            "SELECT dropstock.create_user(NULL)",
            "22023",
            "must not be empty",
        );
        // Only invisible characters: it would list as a blank.
        assert_refused(
            r"SELECT dropstock.create_user(E'\u200B\u200B')",
            "22023",
            "must not be empty",
        );
        assert_refused(
            r"SELECT dropstock.create_user(E'a\tb')",
            "22023",
            "control characters",
        );
        assert_refused(
            &format!("SELECT dropstock.create_user('{}')", "x".repeat(65)),
            "22023",
            "at most 64",
        );
    }
}
