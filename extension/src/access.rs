//! Who may do what (sql/access.sql): the API runs with the owner's rights; PUBLIC gets nothing.

pgrx::extension_sql_file!(
    "../../sql/access.sql",
    name = "access",
    requires = [
        "users",
        "drops",
        "reserve",
        "purchase",
        "cancel",
        "expiry",
        "feed",
        "waitlist",
        "draw",
        _tell_worker_at_commit
    ]
);
