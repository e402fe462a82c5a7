//! `meshgate kafka replay`: asks a running node to republish a range of a Kafka topic into the
//! mesh (`POST /v1/bridges/kafka/{cluster}/replay`) and prints its report.

use anyhow::bail;
use clap::Args;
use meshgate_api::{ReplayReport, ReplayRequest};

/// `meshgate kafka replay`
#[derive(Args)]
pub struct ReplayArgs {
    /// HTTP address of the node that has the cluster.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    http: String,
    /// The cluster's name (`[[kafka]] name`).
    #[arg(long)]
    cluster: String,
    /// Kafka topic to read.
    #[arg(long)]
    topic: String,
    /// Only events whose mesh topic matches this filter (default: all).
    #[arg(long)]
    filter: Option<String>,
    /// From this record timestamp (ms since the epoch), inclusive.
    #[arg(long)]
    from_ms: Option<i64>,
    /// Up to this record timestamp, inclusive.
    #[arg(long)]
    to_ms: Option<i64>,
    /// From this offset, inclusive.
    #[arg(long)]
    from_offset: Option<i64>,
    /// Up to this offset, inclusive.
    #[arg(long)]
    to_offset: Option<i64>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
}

pub fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let req = ReplayRequest {
        topic: a.topic,
        filter: a.filter,
        from_ms: a.from_ms,
        to_ms: a.to_ms,
        from_offset: a.from_offset,
        to_offset: a.to_offset,
        partition: a.partition,
    };
    let url = format!("http://{}/v1/bridges/kafka/{}/replay", a.http, a.cluster);
    let body = serde_json::to_string(&req)?;
    let (status, text) = crate::http_client::request(reqwest::Method::POST, &url, Some(body))?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    let report: ReplayReport = serde_json::from_str(&text)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
