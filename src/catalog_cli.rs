//! `meshgate catalog export`: an AsyncAPI document of the mesh as a running node sees it now
//! (`GET /v1/catalog`): every data product's channels with owners, access, grants, producers,
//! and the live subscribers and producers of each channel.

use anyhow::{Context as _, bail};
use clap::Args;
use meshgate_api::CatalogView;
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
    let catalog: CatalogView =
        serde_json::from_str(&text).context("the node's catalog is not a catalog")?;
    let doc = document(&catalog, a.app.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The AsyncAPI document of `catalog` (the JSON of `GET /v1/catalog`), whole or for `app`.
fn document(catalog: &CatalogView, app: Option<&str>) -> anyhow::Result<Value> {
    let mut out = Map::new();
    for ch in &catalog.channels {
        let owner = ch.owner.as_str();
        if app.is_some_and(|a| a != owner) {
            continue;
        }
        let mut tags: Vec<String> = ch
            .grants
            .iter()
            .map(|g| format!("grant-access:{g}"))
            .collect();
        tags.sort();
        let mut operation = json!({ "operationId": ch.kafka_topic });
        if !tags.is_empty() {
            operation["tags"] = tags.iter().map(|t| json!({ "name": t })).collect();
        }
        let mut c = json!({
            "description": format!("{} channel of {owner}; mesh topics {}", ch.access, ch.topic),
            "publish": operation,
            "x-type": ch.kind,
            "x-live-subscribers": ch.subscribers,
            "x-live-producers": ch.producers_last_hour,
        });
        if !ch.producers.is_empty() {
            c["x-producers"] = json!(ch.producers);
        }
        if let Some(eol) = &ch.eol {
            c["x-deprecated"] = json!({ "eol": eol });
        }
        if let Some(n) = ch.partitions {
            c["bindings"] = json!({ "kafka": { "partitions": n } });
        }
        let key = match app {
            Some(_) => ch.address.clone(),
            None => ch.topic.clone(),
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
            "version": catalog.version.to_string(),
            "description": "Exported by `meshgate catalog export` from the catalog in force, with the live subscribers and producers of each channel (x-live-*). Message schemas stay in the source specs."
        },
        "channels": out,
    }))
}
