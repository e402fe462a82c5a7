//! CPU time of a process (all its threads) from `/proc/PID/stat`, so that throughput can be
//! compared per CPU second spent by the broker.

use std::sync::OnceLock;

use anyhow::Context as _;

/// Clock ticks per second that `/proc` reports in (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Parses utime + stime (in ticks) from the text of a `/proc/PID/stat` file.
pub fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself:
    // fields are counted from the last ')'.
    let rest = &stat[stat.rfind(')').context("no ')' in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Reads CPU seconds (user + system) of one process.
pub struct CpuClock {
    path: String,
    ticks_per_second: f64,
}

impl CpuClock {
    /// A clock for `pid`, or for this process when `None`.
    pub fn new(pid: Option<u32>) -> Self {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_string(),
        };
        Self {
            path,
            ticks_per_second: ticks_per_second(),
        }
    }

    /// CPU seconds used so far.
    pub fn seconds(&self) -> anyhow::Result<f64> {
        let stat =
            std::fs::read_to_string(&self.path).with_context(|| format!("read {}", self.path))?;
        Ok(parse_cpu_ticks(&stat)? as f64 / self.ticks_per_second)
    }
}

/// Busy CPU seconds of the whole machine (all cores), from the first line of `/proc/stat`.
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    Ok(parse_machine_busy_ticks(&stat)? as f64 / ticks_per_second())
}

/// Parses busy ticks (everything but idle and iowait) from the text of `/proc/stat`.
pub fn parse_machine_busy_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal; guest is inside user
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parse /proc/stat")?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok(total - idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_after_a_tricky_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1 0 0";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 325);
    }

    #[test]
    fn machine_busy_skips_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 7 2 3 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_machine_busy_ticks(stat).unwrap(), 21);
    }

    #[test]
    fn reads_own_process() {
        assert!(CpuClock::new(None).seconds().unwrap() >= 0.0);
    }
}
