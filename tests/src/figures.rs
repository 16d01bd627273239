//! The figures the reliability tests leave in `target/reliability.txt`, one line per test, so the README
//! can quote the last run.

use std::path::PathBuf;

/// `target/reliability.txt` of the workspace.
pub fn figures_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reliability.txt")
}

/// Prints one summary line and keeps it in `target/reliability.txt` under `key` (replacing the line of an
/// earlier run with the same key).
pub fn record(key: &str, summary: &str) {
    let line = format!("{key}: {summary}");
    println!("{line}");
    let path = figures_file();
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|existing| !existing.starts_with(&format!("{key}: ")))
        .map(str::to_owned)
        .collect();
    lines.push(line);
    lines.sort();
    std::fs::write(&path, lines.join("\n") + "\n").expect("write target/reliability.txt");
}
