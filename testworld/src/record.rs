//! Benchmark figures for `scripts/bench --report`: where `OUTSOCK_BENCH_RECORD` names a file,
//! each bench appends its figures to it, one per line, tab-separated —
//! `figure BENCH NAME UNIT VALUE` or `samples BENCH NAME UNIT V1,V2,…` — for
//! `outsock-report` to turn into docs/benchmarks.md and its plots. Without it, nothing is
//! written (the benches print their figures as always).

use std::io::Write;

/// The environment variable naming the record file.
pub const RECORD_ENV: &str = "OUTSOCK_BENCH_RECORD";

/// Records one figure (`bench`'s `name`, in `unit`).
pub fn figure(bench: &str, name: &str, unit: &str, value: f64) {
    append(&format!("figure\t{bench}\t{name}\t{unit}\t{value}"));
}

/// Records a series of samples (for a distribution), in `unit`.
pub fn samples(bench: &str, name: &str, unit: &str, values: &[f64]) {
    let list: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    append(&format!(
        "samples\t{bench}\t{name}\t{unit}\t{}",
        list.join(",")
    ));
}

fn append(line: &str) {
    let Ok(path) = std::env::var(RECORD_ENV) else {
        return;
    };
    if path.is_empty() {
        return;
    }
    // Tabs and newlines inside a name would break the line format.
    let line: String = line
        .split('\t')
        .map(|f| f.replace(['\n', '\r'], " "))
        .collect::<Vec<_>>()
        .join("\t");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("{RECORD_ENV}={path}: {e}");
    }
}
