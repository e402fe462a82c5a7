//! `loadgen summarize`: reads the JSON lines of many runs and prints markdown tables of the
//! medians per workload and broker, results per broker CPU second, and same-run ratios of a
//! baseline broker against each other one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;

use crate::report::Report;
use crate::table::median;

/// What a row measures, which decides its formatting and which way is better.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Unit {
    /// Messages per second, higher is better.
    Rate,
    /// Seconds, lower is better.
    Seconds,
    /// Microseconds, lower is better.
    Micros,
    /// Payload bytes per second, higher is better (shown in MB/s).
    Bytes,
}

/// One table row: sorted by `order`, shown as `title`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Row {
    order: (u8, usize, u8),
    title: String,
    unit: Unit,
}

/// Values of one row for one broker, one per successful run, and how many runs there were.
#[derive(Default)]
struct Cell {
    values: Vec<f64>,
    per_cpu: Vec<f64>,
    cores: Vec<f64>,
    lost: u64,
    stalls: u64,
    malformed: u64,
    notes: Vec<String>,
    runs: usize,
}

fn workload_rank(workload: &str) -> u8 {
    match workload {
        "one-to-one" => 0,
        "fan-out" => 1,
        "many-subs" => 2,
        "latency" => 4,
        "rtt" => 5,
        _ => 9,
    }
}

/// The rows one report contributes to, with its value there (`None` for a failed run); with
/// `bytes`, one-to-one also gets a row of payload bytes per second.
fn rows_of(r: &Report, bytes: bool) -> Vec<(Row, Option<f64>)> {
    let ok = r.error.is_none();
    let rank = workload_rank(&r.workload);
    let row = |sub: u8, title: String, unit| Row {
        order: (rank, r.payload_bytes, sub),
        title,
        unit,
    };
    let size = r.payload_bytes;
    match r.workload.as_str() {
        "latency" | "rtt" => {
            let lat = r.latency.clone().filter(|_| ok);
            let rate = r
                .rate
                .map(|v| format!(" @ {}k msg/s", v / 1000))
                .unwrap_or_default();
            let what = if r.workload == "rtt" {
                "round trip"
            } else {
                "latency"
            };
            vec![
                (
                    row(0, format!("{what} p50{rate}, {size} B (µs)"), Unit::Micros),
                    lat.as_ref().map(|l| l.p50_us),
                ),
                (
                    row(1, format!("{what} p99{rate}, {size} B (µs)"), Unit::Micros),
                    lat.as_ref().map(|l| l.p99_us),
                ),
                (
                    row(
                        2,
                        format!("{what} p99.9{rate}, {size} B (µs)"),
                        Unit::Micros,
                    ),
                    lat.as_ref().map(|l| l.p999_us),
                ),
            ]
        }
        "many-subs" => {
            let subs = r.subscriptions;
            vec![
                (
                    row(
                        0,
                        format!("many-subs {subs} subs, {size} B (msg/s)"),
                        Unit::Rate,
                    ),
                    ok.then_some(r.delivered_per_s),
                ),
                (
                    Row {
                        order: (3, size, 1),
                        title: format!("many-subs: time to subscribe {subs} (s)"),
                        unit: Unit::Seconds,
                    },
                    r.subscribe_s.filter(|_| ok),
                ),
            ]
        }
        "fan-out" => {
            let title = format!("fan-out 1→{}, {size} B (msg/s out)", r.subscribers);
            vec![(row(0, title, Unit::Rate), ok.then_some(r.delivered_per_s))]
        }
        other => {
            let mut rows = vec![(
                row(0, format!("{other} {size} B (msg/s)"), Unit::Rate),
                ok.then_some(r.delivered_per_s),
            )];
            if bytes && other == "one-to-one" {
                rows.push((
                    row(
                        1,
                        format!("{other} {size} B (MB/s of payload)"),
                        Unit::Bytes,
                    ),
                    ok.then_some(r.delivered_per_s * size as f64),
                ));
            }
            rows
        }
    }
}

fn format_value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Rate if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Unit::Rate if v >= 1e5 => format!("{:.0}k", v / 1e3),
        Unit::Rate if v >= 1e3 => format!("{:.1}k", v / 1e3),
        Unit::Rate => format!("{v:.0}"),
        Unit::Seconds => format!("{v:.2}"),
        Unit::Micros if v >= 100.0 => format!("{v:.0}"),
        Unit::Micros => format!("{v:.1}"),
        Unit::Bytes => format!("{:.0}", v / 1e6),
    }
}

/// Parses JSON lines (blank lines skipped) into reports.
pub fn parse_lines(text: &str) -> anyhow::Result<Vec<Report>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
        .collect()
}

/// Renders the markdown summary; `order` fixes the broker columns (others follow in order of
/// appearance) and `baseline` names the broker whose ratios to the others are shown.
pub fn render(reports: &[Report], order: &[String], baseline: &str, bytes: bool) -> String {
    let mut brokers: Vec<String> = order.to_vec();
    for r in reports {
        if !brokers.contains(&r.label) {
            brokers.push(r.label.clone());
        }
    }
    let present: Vec<&String> = brokers
        .iter()
        .filter(|b| reports.iter().any(|r| &r.label == *b))
        .collect();
    let mut table: BTreeMap<Row, BTreeMap<String, Cell>> = BTreeMap::new();
    for r in reports {
        for (row, value) in rows_of(r, bytes) {
            let cell = table
                .entry(row.clone())
                .or_default()
                .entry(r.label.clone())
                .or_default();
            cell.runs += 1;
            let Some(v) = value else { continue };
            cell.values.push(v);
            if row.unit == Unit::Rate {
                cell.per_cpu.extend(r.delivered_per_broker_cpu_s);
                cell.cores
                    .extend(r.broker_cpu_s.map(|c| c / r.seconds.max(f64::MIN_POSITIVE)));
            }
            // Each report counts its losses once, on its first row.
            if row.order.2 == 0 {
                cell.lost += r.lost;
                cell.stalls += r.stalls;
                cell.malformed += r.malformed;
                cell.notes.extend(r.note.clone());
            }
        }
    }

    let mut md = String::new();
    let header = |md: &mut String, first: &str| {
        let _ = writeln!(
            md,
            "| {first} | {} |",
            present
                .iter()
                .map(|b| b.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(md, "|---|{}", "---:|".repeat(present.len()));
    };
    // `spread`: add ±half the range of the values, relative to the median.
    let cell_text = |cells: &BTreeMap<String, Cell>,
                     b: &str,
                     pick: fn(&Cell) -> &[f64],
                     unit: Unit,
                     spread: bool| {
        let Some(cell) = cells.get(b) else {
            return "–".to_string();
        };
        let values = pick(cell);
        let Some(m) = median(values) else {
            return if cell.runs > 0 {
                "failed".to_string()
            } else {
                "–".to_string()
            };
        };
        let mut text = format_value(unit, m);
        if spread && values.len() > 1 && m > 0.0 {
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            let min = values.iter().copied().fold(f64::MAX, f64::min);
            let _ = write!(text, " ±{:.0}%", (max - min) / 2.0 / m * 100.0);
        }
        if cell.values.len() < cell.runs {
            let _ = write!(text, " ({}/{} ok)", cell.values.len(), cell.runs);
        }
        text
    };

    let _ = writeln!(
        md,
        "Medians over repetitions, ± half the range between the lowest and highest repetition (higher msg/s is better; lower µs and s are better).\n"
    );
    header(&mut md, "workload");
    for (row, cells) in &table {
        let texts: Vec<String> = present
            .iter()
            .map(|b| cell_text(cells, b, |c| &c.values, row.unit, true))
            .collect();
        let _ = writeln!(md, "| {} | {} |", row.title, texts.join(" | "));
    }

    let _ = writeln!(
        md,
        "\nMessages delivered per broker CPU second (broker cores busy in parentheses).\n"
    );
    header(&mut md, "workload");
    for (row, cells) in table.iter().filter(|(row, _)| row.unit == Unit::Rate) {
        let texts: Vec<String> = present
            .iter()
            .map(|b| {
                let per_cpu = cell_text(cells, b, |c| &c.per_cpu, Unit::Rate, false);
                match cells.get(b.as_str()).and_then(|c| median(&c.cores)) {
                    Some(cores) => format!("{per_cpu} ({cores:.2})"),
                    None => per_cpu,
                }
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", row.title, texts.join(" | "));
    }

    let others_busy: Vec<f64> = reports
        .iter()
        .filter(|r| r.error.is_none() && r.seconds > 0.0)
        .map(|r| r.other_cpu_s / r.seconds)
        .collect();
    if let Some(m) = median(&others_busy) {
        let max = others_busy.iter().copied().fold(0.0, f64::max);
        let busy = others_busy.iter().filter(|v| **v > 0.25).count();
        let _ = writeln!(
            md,
            "\nOther processes on the machine during the measured windows: median {m:.2} cores, \
             max {max:.2}; {busy} of {} runs shared more than 0.25 cores with other work.",
            others_busy.len()
        );
    }

    let losses: Vec<String> = table
        .iter()
        .flat_map(|(row, cells)| {
            cells
                .iter()
                .filter(|(_, c)| c.lost > 0 || c.stalls > 0 || c.malformed > 0 || !c.notes.is_empty())
                .map(move |(b, c)| {
                    let mut line = format!(
                        "{b}, {}: {} copies not delivered, {} window stalls, {} malformed (all repetitions)",
                        row.title, c.lost, c.stalls, c.malformed
                    );
                    for note in &c.notes {
                        let _ = write!(line, "; {note}");
                    }
                    line
                })
        })
        .collect();
    if losses.is_empty() {
        let _ = writeln!(md, "\nNo message was lost in any successful run.");
    } else {
        let _ = writeln!(
            md,
            "\nLosses and notes (copies not delivered by the end of a 1 s drain count as lost):\n"
        );
        for l in losses {
            let _ = writeln!(md, "- {l}");
        }
    }

    let others: Vec<&&String> = present.iter().filter(|b| b.as_str() != baseline).collect();
    if !present.iter().any(|b| b.as_str() == baseline) {
        let _ = writeln!(md, "\nNo ratios: {baseline} was not measured in this run.");
        return md;
    }
    let _ = writeln!(
        md,
        "\nSame-run ratios {baseline} / other (for msg/s above 1 means {baseline} is faster; for µs and s below 1 means {baseline} is faster).\n"
    );
    let _ = writeln!(
        md,
        "| workload | {} |",
        others
            .iter()
            .map(|b| format!("{baseline} / {b}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---:|".repeat(others.len()));
    for (row, cells) in &table {
        let base = cells.get(baseline).and_then(|c| median(&c.values));
        let texts: Vec<String> = others
            .iter()
            .map(
                |b| match (base, cells.get(b.as_str()).and_then(|c| median(&c.values))) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}×", x / y),
                    _ => "–".to_string(),
                },
            )
            .collect();
        let _ = writeln!(md, "| {} | {} |", row.title, texts.join(" | "));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, workload: &str, rate: f64) -> Report {
        Report {
            label: label.into(),
            workload: workload.into(),
            payload_bytes: 128,
            subscribers: 1,
            seconds: 1.0,
            delivered_per_s: rate,
            broker_cpu_s: Some(0.5),
            delivered_per_broker_cpu_s: Some(rate * 2.0),
            ..Report::default()
        }
    }

    #[test]
    fn medians_and_ratios() {
        let mut reports = vec![
            report("a", "one-to-one", 100.0),
            report("a", "one-to-one", 300.0),
            report("a", "one-to-one", 200.0),
            report("b", "one-to-one", 1e6),
        ];
        reports.push(Report {
            error: Some("exit 1".into()),
            ..report("b", "one-to-one", 0.0)
        });
        let md = render(&reports, &["b".into(), "a".into()], "a", false);
        assert!(
            md.contains("| one-to-one 128 B (msg/s) | 1.00M (1/2 ok) | 200 ±50% |"),
            "{md}"
        );
        assert!(md.contains("| a / b |"), "{md}");
        assert!(md.contains("| 0.00× |"), "{md}");
        assert!(md.contains("(0.50)"), "{md}");
        let without = render(&reports, &[], "meshgate", false);
        assert!(
            without.contains("No ratios: meshgate was not measured"),
            "{without}"
        );
    }

    #[test]
    fn bytes_rows_and_round_trips() {
        let mut one = report("a", "one-to-one", 1000.0);
        one.payload_bytes = 1024;
        let rtt = Report {
            latency: Some(crate::report::Latency {
                p50_us: 250.0,
                ..Default::default()
            }),
            rate: Some(10_000),
            ..report("a", "rtt", 0.0)
        };
        let md = render(&[one, rtt], &[], "a", true);
        assert!(
            md.contains("| one-to-one 1024 B (MB/s of payload) | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("| round trip p50 @ 10k msg/s, 128 B (µs) | 250 |"),
            "{md}"
        );
    }

    #[test]
    fn median_of_even_count() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
