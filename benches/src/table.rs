//! `loadgen table`: one row per label (setup) of the JSON lines of `loadgen run`: median
//! messages delivered per second with the spread over repetitions, PUBACK latency for QoS 1
//! runs, broker cores, what was lost or delivered twice, and the same-run ratio of each row to
//! each of the `--ratio-to` labels. Used by `run-qos1.sh` and `run-guaranteed-mesh.sh`, where
//! each label is one configuration of one workload.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::Report;

pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

pub(crate) fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e5 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn micros(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[derive(Default)]
struct Cell<'a> {
    ok: Vec<&'a Report>,
    failed: Vec<&'a Report>,
}

/// The markdown table of `reports`, rows in `order` (then any other labels, sorted).
pub fn render(reports: &[Report], order: &[String], ratio_to: &[String]) -> String {
    let mut cells: BTreeMap<&str, Cell<'_>> = BTreeMap::new();
    for r in reports {
        let c = cells.entry(r.label.as_str()).or_default();
        if r.error.is_some() {
            c.failed.push(r);
        } else {
            c.ok.push(r);
        }
    }
    let mut labels: Vec<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|l| cells.contains_key(l))
        .collect();
    for l in cells.keys() {
        if !labels.contains(l) {
            labels.push(l);
        }
    }
    let med = |label: &str| {
        cells
            .get(label)
            .and_then(|c| median(&c.ok.iter().map(|r| r.delivered_per_s).collect::<Vec<_>>()))
    };
    let mut out = String::new();
    out.push_str("| setup | msg/s delivered (median ± half range) | per run | PUBACK p50 / p99 (µs) | broker cores |");
    for r in ratio_to {
        let _ = write!(out, " / {r} |");
    }
    out.push_str("\n|---|---:|---|---:|---:|");
    for _ in ratio_to {
        out.push_str("---:|");
    }
    out.push('\n');
    let mut notes = Vec::new();
    for label in &labels {
        let c = &cells[label];
        let values: Vec<f64> = c.ok.iter().map(|r| r.delivered_per_s).collect();
        let value = if values.is_empty() {
            "failed".into()
        } else {
            spread(&values)
        };
        let per_run = values
            .iter()
            .map(|v| rate(*v))
            .collect::<Vec<_>>()
            .join(", ");
        let p50: Vec<f64> =
            c.ok.iter()
                .filter_map(|r| r.puback.as_ref().map(|l| l.p50_us))
                .collect();
        let p99: Vec<f64> =
            c.ok.iter()
                .filter_map(|r| r.puback.as_ref().map(|l| l.p99_us))
                .collect();
        let lat = match (median(&p50), median(&p99)) {
            (Some(a), Some(b)) => format!("{} / {}", micros(a), micros(b)),
            _ => "–".into(),
        };
        let cores: Vec<f64> =
            c.ok.iter()
                .filter_map(|r| r.broker_cpu_s.map(|s| s / r.seconds))
                .collect();
        let cores = median(&cores).map_or("–".into(), |v| format!("{v:.2}"));
        let _ = write!(out, "| {label} | {value} | {per_run} | {lat} | {cores} |");
        for r in ratio_to {
            let cell = match (med(label), med(r)) {
                _ if *label == r.as_str() => "1×".to_string(),
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
        let lost: u64 = c.ok.iter().map(|r| r.lost).sum();
        let dups: u64 = c.ok.iter().map(|r| r.duplicates).sum();
        let stalls: u64 = c.ok.iter().map(|r| r.stalls).sum();
        let unacked: u64 = c.ok.iter().map(|r| r.unacked).sum();
        let malformed: u64 = c.ok.iter().map(|r| r.malformed).sum();
        let mut what = Vec::new();
        if lost > 0 {
            what.push(format!("{lost} never delivered"));
        }
        if dups > 0 {
            what.push(format!("{dups} delivered twice"));
        }
        if unacked > 0 {
            what.push(format!("{unacked} never acknowledged"));
        }
        if stalls > 0 {
            what.push(format!("{stalls} window stalls of 200 ms"));
        }
        if malformed > 0 {
            what.push(format!("{malformed} malformed"));
        }
        for r in &c.failed {
            what.push(format!(
                "failed: {}",
                r.error.as_deref().unwrap_or_default()
            ));
        }
        for r in &c.ok {
            if let Some(n) = &r.note {
                what.push(n.clone());
            }
        }
        if !what.is_empty() {
            notes.push(format!("- {label}: {}", what.join("; ")));
        }
    }
    let others: Vec<f64> = reports
        .iter()
        .filter(|r| r.error.is_none() && r.seconds > 0.0)
        .map(|r| r.other_cpu_s / r.seconds)
        .collect();
    notes.extend(other_work_note(&others));
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

/// Median with ± half the range ("–" for no value).
pub(crate) fn spread(values: &[f64]) -> String {
    match median(values) {
        None => "–".into(),
        Some(m) if values.len() > 1 && m > 0.0 => {
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(0.0, f64::max);
            format!("{} ±{:.0}%", rate(m), (hi - lo) / 2.0 / m * 100.0)
        }
        Some(m) => rate(m),
    }
}

/// The note on other processes' cores (per run) during the measured windows, if any run.
pub(crate) fn other_work_note(others: &[f64]) -> Option<String> {
    let m = median(others)?;
    let max = others.iter().copied().fold(0.0, f64::max);
    let busy = others.iter().filter(|v| **v > 0.25).count();
    Some(format!(
        "- other processes on the machine during the measured windows: median {m:.2} cores, at most {max:.2}; {busy} of {} runs shared more than 0.25 cores",
        others.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, rate: f64) -> Report {
        Report {
            label: label.into(),
            seconds: 1.0,
            delivered_per_s: rate,
            ..Report::default()
        }
    }

    #[test]
    fn medians_and_ratios_per_label() {
        let reports = vec![
            report("a", 300.0),
            report("a", 100.0),
            report("a", 200.0),
            report("b", 100.0),
        ];
        let md = render(&reports, &["b".into(), "a".into()], &["b".into()]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[2].starts_with("| b | 100 | 100 |"), "{md}");
        assert!(lines[3].starts_with("| a | 200 ±50% |"), "{md}");
        assert!(lines[3].ends_with(" 2.00× |"), "{md}");
    }
}
