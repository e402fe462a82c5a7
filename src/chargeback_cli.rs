//! `meshgate chargeback`: every app's metered traffic from one or more nodes
//! (`GET /v1/chargeback`), as a table, JSON or CSV.

use anyhow::{Context as _, bail};
use clap::Args;
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
    let mut rows: Vec<Value> = Vec::new();
    for node in &a.nodes {
        let url = format!("http://{node}/v1/chargeback?{}", query.join("&"));
        let (status, text) = crate::http_client::request(reqwest::Method::GET, &url, None)?;
        if !status.is_success() {
            bail!("{node}: {status}: {text}");
        }
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{node}: not JSON"))?;
        for mut r in v["rows"].as_array().cloned().unwrap_or_default() {
            r["node"] = Value::String(node.clone());
            rows.push(r);
        }
    }
    let s = |r: &Value, k: &str| match &r[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if a.csv {
        println!("node,app,owner,topic,kind,peer,messages,bytes");
        for r in &rows {
            let cells: Vec<String> = [
                "node", "app", "owner", "topic", "kind", "peer", "messages", "bytes",
            ]
            .iter()
            .map(|k| {
                let v = s(r, k);
                if v.contains([',', '"', '\n']) {
                    format!("\"{}\"", v.replace('"', "\"\""))
                } else {
                    v
                }
            })
            .collect();
            println!("{}", cells.join(","));
        }
    } else {
        println!(
            "{:<21} {:<28} {:<28} {:<9} {:<12} {:>10} {:>12}  topic",
            "node", "app", "owner", "kind", "peer", "messages", "bytes"
        );
        for r in &rows {
            println!(
                "{:<21} {:<28} {:<28} {:<9} {:<12} {:>10} {:>12}  {}",
                s(r, "node"),
                s(r, "app"),
                s(r, "owner"),
                s(r, "kind"),
                s(r, "peer"),
                s(r, "messages"),
                s(r, "bytes"),
                s(r, "topic")
            );
        }
    }
    Ok(())
}
