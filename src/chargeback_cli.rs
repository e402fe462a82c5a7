//! `meshgate chargeback`: every app's metered traffic from one or more nodes
//! (`GET /v1/chargeback`), as a table, JSON or CSV.

use anyhow::{Context as _, bail};
use clap::Args;
use meshgate_api::{ChargebackRow, ChargebackView, csv_field};
use serde_json::Value;

/// `meshgate chargeback`
#[derive(Args)]
pub struct ChargebackArgs {
    /// HTTP address of a node (repeatable: the rows of each node, with its address).
    #[arg(
        long = "http",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    nodes: Vec<String>,
    /// Start of the window, unix seconds (minute resolution).
    #[arg(long)]
    from: Option<u64>,
    /// End of the window, unix seconds (exclusive).
    #[arg(long)]
    to: Option<u64>,
    /// Print CSV: node,app,owner,topic,kind,peer,messages,bytes.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Print the JSON rows, each with its node.
    #[arg(long)]
    json: bool,
}

/// Fetches the rows of every node and prints them.
pub fn chargeback(a: ChargebackArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(f) = a.from {
        query.push(format!("from={f}"));
    }
    if let Some(t) = a.to {
        query.push(format!("to={t}"));
    }
    let mut rows: Vec<(String, ChargebackRow)> = Vec::new();
    for node in &a.nodes {
        let url = format!("http://{node}/v1/chargeback?{}", query.join("&"));
        let (status, text) = crate::http_client::request(reqwest::Method::GET, &url, None)?;
        if !status.is_success() {
            bail!("{node}: {status}: {text}");
        }
        let v: ChargebackView =
            serde_json::from_str(&text).with_context(|| format!("{node}: not chargeback rows"))?;
        rows.extend(v.rows.into_iter().map(|r| (node.clone(), r)));
    }
    if a.json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(node, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["node"] = Value::String(node.clone());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if a.csv {
        println!("node,{}", ChargebackRow::CSV_HEADER);
        for (node, r) in &rows {
            println!("{},{}", csv_field(node), r.csv_cells().join(","));
        }
    } else {
        println!(
            "{:<21} {:<28} {:<28} {:<9} {:<12} {:>10} {:>12}  topic",
            "node", "app", "owner", "kind", "peer", "messages", "bytes"
        );
        for (node, r) in &rows {
            println!(
                "{:<21} {:<28} {:<28} {:<9} {:<12} {:>10} {:>12}  {}",
                node,
                r.app,
                r.owner.as_deref().unwrap_or_default(),
                r.kind,
                r.peer.as_deref().unwrap_or_default(),
                r.messages,
                r.bytes,
                r.topic
            );
        }
    }
    Ok(())
}
