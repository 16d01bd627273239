//! dropstock-http: the HTTP adapter in front of the dropstock extension (REST, WebSocket feed, live page).

fn main() {
    eprintln!("dropstock-http: not built yet; use the SQL API (see README.md)");
    std::process::exit(2);
}
