//! `outsock-report RECORD OUT_DIR`: turns the figures the benchmarks recorded
//! (`testworld::record`, written by `scripts/bench --report`) into `OUT_DIR/benchmarks.md` and
//! its SVG plots under `OUT_DIR/benchmarks/`: throughput ratios, connection-rate ratios,
//! latency distributions as CDFs, DNS queries/s and CPU per query — with the machine the run
//! was made on. Not a test.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// One recorded figure.
struct Figure {
    bench: String,
    name: String,
    unit: String,
    value: f64,
}

/// One recorded distribution.
struct Samples {
    bench: String,
    name: String,
    unit: String,
    values: Vec<f64>,
}

#[derive(Default)]
struct Record {
    figures: Vec<Figure>,
    samples: Vec<Samples>,
}

impl Record {
    fn parse(text: &str) -> Result<Self> {
        let mut r = Self::default();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            let [kind, bench, name, unit, value] = f[..] else {
                bail!("line {}: expected 5 tab-separated fields", i + 1);
            };
            let (bench, name, unit) = (bench.to_owned(), name.to_owned(), unit.to_owned());
            match kind {
                "figure" => r.figures.push(Figure {
                    bench,
                    name,
                    unit,
                    value: value
                        .parse()
                        .with_context(|| format!("line {}: a number", i + 1))?,
                }),
                "samples" => {
                    let mut values = value
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(str::parse)
                        .collect::<Result<Vec<f64>, _>>()
                        .with_context(|| format!("line {}: numbers", i + 1))?;
                    values.sort_by(f64::total_cmp);
                    r.samples.push(Samples {
                        bench,
                        name,
                        unit,
                        values,
                    });
                }
                other => bail!("line {}: unknown kind {other:?}", i + 1),
            }
        }
        Ok(r)
    }

    /// The figures of `bench` whose name starts with `prefix`, as (rest of the name, value).
    fn with_prefix(&self, bench: &str, prefix: &str) -> Vec<(String, f64)> {
        self.figures
            .iter()
            .filter(|f| f.bench == bench)
            .filter_map(|f| {
                f.name
                    .strip_prefix(prefix)
                    .map(|rest| (rest.to_owned(), f.value))
            })
            .collect()
    }
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A horizontal bar chart of `bars` (label, value), with a reference line at `reference`.
fn bar_chart(
    path: &Path,
    title: &str,
    axis: &str,
    bars: &[(String, f64)],
    reference: Option<f64>,
) -> Result<()> {
    let height = 90 + 34 * u32::try_from(bars.len()).unwrap_or(20);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars
        .iter()
        .map(|b| b.1)
        .chain(reference)
        .fold(0.0_f64, f64::max)
        * 1.15;
    #[allow(clippy::cast_precision_loss)] // A handful of bars.
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..top.max(1e-9), 0.0..n)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let frac = y.fract();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // An index.
            let i = y.floor() as usize;
            if (frac - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(axis)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        #[allow(clippy::cast_precision_loss)]
        let y = i as f64;
        Rectangle::new(
            [(0.0, y + 0.15), (*v, y + 0.85)],
            COLOURS[i % COLOURS.len()].filled(),
        )
    }))?;
    if let Some(r) = reference {
        chart.draw_series(LineSeries::new(
            vec![(r, 0.0), (r, n)],
            BLACK.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// CDFs of `series` on a logarithmic x axis from the smallest sample to the largest p99 (the
/// tails beyond are in the tables).
fn cdf_chart(path: &Path, title: &str, series: &[&Samples]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let p99 = |v: &[f64]| v[(v.len() * 99 / 100).min(v.len() - 1)];
    let right = series
        .iter()
        .map(|s| p99(&s.values))
        .fold(0.0_f64, f64::max)
        * 1.05;
    let left = series
        .iter()
        .filter_map(|s| s.values.first().copied())
        .fold(f64::INFINITY, f64::min)
        .max(0.1)
        * 0.9;
    let unit = series.first().map_or("", |s| s.unit.as_str());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((left..right.max(left * 2.0)).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc(format!("{unit} (log scale)"))
        .y_desc("fraction ≤ x")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        #[allow(clippy::cast_precision_loss)]
        let len = s.values.len() as f64;
        let step = (s.values.len() / 400).max(1);
        let points: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .step_by(step)
            .filter(|(_, v)| **v <= right && **v >= left)
            .map(|(k, v)| {
                #[allow(clippy::cast_precision_loss)]
                let frac = (k + 1) as f64 / len;
                (*v, frac)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A section of ratios to native: its bar chart (`plots/FILE.svg`, a line at 1) under
/// `heading`; nothing where there are no bars.
fn ratio_section(
    md: &mut String,
    plots: &Path,
    (heading, file): (&str, &str),
    title: &str,
    bars: &[(String, f64)],
) -> Result<()> {
    if bars.is_empty() {
        return Ok(());
    }
    bar_chart(
        &plots.join(format!("{file}.svg")),
        title,
        "ratio of medians",
        bars,
        Some(1.0),
    )?;
    writeln!(
        md,
        "## {heading}\n\n![{file} ratios](benchmarks/{file}.svg)\n"
    )?;
    Ok(())
}

/// The machine the run was made on, from /proc and uname.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let virt = if std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains(" hypervisor")
    {
        ", a virtual machine"
    } else {
        ""
    };
    format!("{cores} × {cpu}{virt}, {mem_gib:.0} GiB, Linux {kernel}")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, record, out] = &args[..] else {
        bail!("usage: outsock-report RECORD OUT_DIR");
    };
    let text = std::fs::read_to_string(record).with_context(|| format!("reading {record}"))?;
    let r = Record::parse(&text)?;
    let out = Path::new(out);
    let plots = out.join("benchmarks");
    std::fs::create_dir_all(&plots)?;
    let mut md = String::new();
    let when = std::env::var("OUTSOCK_REPORT_DATE").unwrap_or_default();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Made by `sudo scripts/bench --report` (every benchmark, then `outsock-report`){}, \
         on {}. Every figure compares outsock with native IPv6 (or another server) measured \
         in the same run, rounds alternating; absolute numbers belong to this machine, ratios \
         are what carries over. All traffic stays inside the test world's namespaces.\n",
        if when.is_empty() {
            String::new()
        } else {
            format!(" at {when}")
        },
        machine()
    )?;

    // Throughput ratios.
    let mut bars = Vec::new();
    for (bench, label) in [
        ("throughput", "iperf3 -4"),
        ("static-throughput", "static Go client"),
        ("relay", "host-server"),
        ("vm-throughput", "VM"),
    ] {
        // The relay bench's native against itself is 1 by definition: no bar.
        for (name, v) in r.with_prefix(bench, "ratio: ") {
            if name != "Native" {
                bars.push((format!("{label}: {name}"), v));
            }
        }
    }
    ratio_section(
        &mut md,
        &plots,
        ("Throughput", "throughput"),
        "Bulk throughput, ratio to native IPv6 (1 = native)",
        &bars,
    )?;

    // Connection rate.
    let mut bars = Vec::new();
    for (bench, label) in [
        ("connrate-outbound", "outbound"),
        ("connrate-inbound", "inbound"),
        ("vm-connrate", "VM outbound"),
    ] {
        for (name, v) in r.with_prefix(bench, "ratio @") {
            // "32" or "32 (relay)".
            let bar = match name.split_once(" (") {
                Some((n, how)) => format!("{label}, {n} clients ({how}"),
                None => format!("{label}, {name} clients"),
            };
            bars.push((bar, v));
        }
    }
    ratio_section(
        &mut md,
        &plots,
        ("Connection rate", "connrate"),
        "Connections per second (one per request), ratio to native",
        &bars,
    )?;

    // Latency distributions.
    let mut benches: Vec<&str> = r.samples.iter().map(|s| s.bench.as_str()).collect();
    benches.dedup();
    if !benches.is_empty() {
        writeln!(md, "## Latency distributions\n")?;
    }
    for bench in benches {
        let series: Vec<&Samples> = r.samples.iter().filter(|s| s.bench == bench).collect();
        let file = format!("{bench}.svg");
        cdf_chart(
            &plots.join(&file),
            &format!("{bench}: connect + first byte, CDF"),
            &series,
        )?;
        writeln!(md, "### {bench}\n\n![{bench} CDF](benchmarks/{file})\n")?;
        writeln!(
            md,
            "| series | samples | p50 | p90 | p99 |\n|---|---:|---:|---:|---:|"
        )?;
        for s in series {
            let q = |p: usize| s.values[(s.values.len() * p / 100).min(s.values.len() - 1)];
            writeln!(
                md,
                "| {} | {} | {:.1} {u} | {:.1} {u} | {:.1} {u} |",
                s.name,
                s.values.len(),
                q(50),
                q(90),
                q(99),
                u = s.unit
            )?;
        }
        writeln!(md)?;
    }

    // DNS.
    let qps = r.with_prefix("dns", "qps: ");
    let cpu = r.with_prefix("dns", "CPU per query: ");
    if !qps.is_empty() {
        bar_chart(
            &plots.join("dns-qps.svg"),
            "DNS answers per second (dnsperf, same query file)",
            "queries/s (median)",
            &qps,
            None,
        )?;
        bar_chart(
            &plots.join("dns-cpu.svg"),
            "DNS: server CPU per answered query",
            "µs (median)",
            &cpu,
            None,
        )?;
        writeln!(
            md,
            "## DNS\n\n![DNS queries per second](benchmarks/dns-qps.svg)\n\n\
             ![DNS CPU per query](benchmarks/dns-cpu.svg)\n\n\
             dnsperf saturates a core here, so queries/s are bounded by the load generator; \
             CPU per answered query is the figure that compares servers. The bare \
             recvmmsg/sendmmsg echo is the floor: a UDP server that parses nothing.\n"
        )?;
    }

    // Every figure, by bench.
    writeln!(md, "## All figures\n")?;
    let mut by_bench: BTreeMap<&str, Vec<&Figure>> = BTreeMap::new();
    for f in &r.figures {
        by_bench.entry(&f.bench).or_default().push(f);
    }
    for (bench, figs) in by_bench {
        writeln!(md, "### {bench}\n\n| figure | value |\n|---|---:|")?;
        for f in figs {
            let digits = if f.value.abs() >= 100.0 { 0 } else { 3 };
            writeln!(md, "| {} | {:.*} {} |", f.name, digits, f.value, f.unit)?;
        }
        writeln!(md)?;
    }
    std::fs::write(out.join("benchmarks.md"), md)?;
    println!(
        "wrote {} and its plots under {}",
        out.join("benchmarks.md").display(),
        plots.display()
    );
    Ok(())
}
