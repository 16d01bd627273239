//! Tables, types and indexes of schema `dropstock` (sql/schema.sql), created before anything else.

pgrx::extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
