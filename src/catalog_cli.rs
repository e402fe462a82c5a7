//! `meshgate catalog export`: an AsyncAPI document of the mesh as a running node sees it now
//! (`GET /v1/catalog`): every data product's channels with owners, access, grants, producers,
//! and the live subscribers and producers of each channel.

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Map, Value, json};

/// `meshgate catalog export`
#[derive(Args)]
pub struct ExportArgs {
    /// HTTP address of a node governed by specs.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    http: String,
    /// Only this app's data product, as a SpecMesh-dialect spec of that app (`id: urn:<app>`,
    /// channel names relative to it) that `meshgate spec validate` reads back. Without it: one
    /// document of the whole mesh, channels keyed by their mesh topic.
    #[arg(long, value_name = "APP_ID")]
    app: Option<String>,
}

/// Fetches the catalog and prints the document (JSON, which is also YAML).
pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/v1/catalog", a.http);
    let (status, text) = crate::http_client::request(reqwest::Method::GET, &url, None)?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    let catalog: Value = serde_json::from_str(&text).context("the node's catalog is not JSON")?;
    let doc = document(&catalog, a.app.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The AsyncAPI document of `catalog` (the JSON of `GET /v1/catalog`), whole or for `app`.
fn document(catalog: &Value, app: Option<&str>) -> anyhow::Result<Value> {
    let empty = Vec::new();
    let channels = catalog["channels"].as_array().unwrap_or(&empty);
    let mut out = Map::new();
    for ch in channels {
        let owner = ch["owner"].as_str().unwrap_or_default();
        if app.is_some_and(|a| a != owner) {
            continue;
        }
        let mut tags: Vec<Value> = ch["grants"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .map(|g| json!({ "name": format!("grant-access:{g}") }))
            .collect();
        tags.sort_by_key(|t| t["name"].as_str().map(str::to_string));
        let mut operation = json!({ "operationId": ch["kafka_topic"] });
        if !tags.is_empty() {
            operation["tags"] = Value::Array(tags);
        }
        let mut c = json!({
            "description": format!("{} channel of {owner}; mesh topics {}", ch["access"].as_str().unwrap_or("private"), ch["topic"].as_str().unwrap_or_default()),
            "publish": operation,
            "x-type": ch["kind"],
            "x-live-subscribers": ch["subscribers"],
            "x-live-producers": ch["producers_last_hour"],
        });
        if let Some(p) = ch["producers"].as_array().filter(|p| !p.is_empty()) {
            c["x-producers"] = Value::Array(p.clone());
        }
        if let Some(eol) = ch["eol"].as_str() {
            c["x-deprecated"] = json!({ "eol": eol });
        }
        if let Some(n) = ch["partitions"].as_u64() {
            c["bindings"] = json!({ "kafka": { "partitions": n } });
        }
        let key = match app {
            Some(_) => ch["address"].as_str().unwrap_or_default().to_string(),
            None => ch["topic"].as_str().unwrap_or_default().to_string(),
        };
        if app.is_none() {
            c["x-owner"] = json!(owner);
        }
        out.insert(key, c);
    }
    if let Some(a) = app
        && out.is_empty()
    {
        bail!("the catalog has no data product of {a:?}");
    }
    let (id, title) = match app {
        Some(a) => (format!("urn:{a}"), a.to_string()),
        None => ("urn:meshgate.mesh".to_string(), "The mesh".to_string()),
    };
    Ok(json!({
        "asyncapi": "2.5.0",
        "x-dialect": "specmesh",
        "id": id,
        "info": {
            "title": title,
            "version": catalog["version"].to_string(),
            "description": "Exported by `meshgate catalog export` from the catalog in force, with the live subscribers and producers of each channel (x-live-*). Message schemas stay in the source specs."
        },
        "channels": out,
    }))
}
