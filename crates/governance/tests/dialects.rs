//! The same data product written in the three dialects reads into the same model.

mod common;

use meshgate_governance::{Catalog, Channel, Dialect};
use serde_json::{Value, json};

/// What a channel means, without where it was written.
fn meaning(c: &Channel) -> Value {
    json!({
        "owner": c.owner.as_str(),
        "name": c.name,
        "kafka_topic": c.kafka_topic,
        "pattern": c.pattern.as_str(),
        "access": c.access.as_str(),
        "grants": c.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "producers": c.producers.len(),
        "eol": c.eol.map(|d| d.to_string()),
        "owner_sends": c.owner_sends,
        "owner_receives": c.owner_receives,
        "kafka": serde_json::to_value(&c.kafka).unwrap(),
        "messages": c.messages.iter().map(|m| json!({
            "schema_format": m.schema.as_ref().map(|s| serde_json::to_value(s.format).unwrap()),
            "schema_file": m.schema.as_ref().and_then(|s| s.file.clone()),
            "schema": m.schema.as_ref().map(|s| s.document.clone()),
        })).collect::<Vec<_>>(),
    })
}

fn model(catalog: &Catalog) -> Vec<Value> {
    let mut channels: Vec<Value> = catalog.channels().iter().map(meaning).collect();
    channels.sort_by_key(|c| c["kafka_topic"].as_str().unwrap_or_default().to_string());
    channels
}

#[test]
fn three_dialects_one_model() {
    let specmesh = common::catalog("specmesh");
    let v26 = common::catalog("asyncapi26");
    let v30 = common::catalog("asyncapi30");
    assert_eq!(specmesh.products()[0].dialect, Dialect::SpecMesh);
    assert_eq!(v26.products()[0].dialect, Dialect::AsyncApi2);
    assert_eq!(v30.products()[0].dialect, Dialect::AsyncApi3);
    let reference = model(&specmesh);
    assert_eq!(reference.len(), 3);
    assert_eq!(model(&v26), reference, "AsyncAPI 2.6");
    assert_eq!(model(&v30), reference, "AsyncAPI 3.0");
    for c in &reference {
        assert_eq!(c["owner_sends"], true);
        assert_eq!(c["owner_receives"], false);
    }
    for catalog in [&specmesh, &v26, &v30] {
        let p = &catalog.products()[0];
        assert_eq!(p.title.as_deref(), Some("ACME Lifestyle Onboarding"));
        assert_eq!(p.version.as_deref(), Some("1.0.0"));
        assert_eq!(p.channels.len(), 3);
    }
}

#[test]
fn direction_follows_the_dialect() {
    let spec = |asyncapi: &str, op: &str| {
        format!(
            "asyncapi: '{asyncapi}'\nid: urn:acme.x\nchannels:\n  _public.a:\n    {op}:\n      message: {{}}\n"
        )
    };
    let read = |text: String| {
        let mut sources = meshgate_governance::Sources::new();
        sources.insert("x.yaml", text);
        let (catalog, problems) = Catalog::build(&sources, 1);
        assert!(problems.is_empty(), "{problems:?}");
        let c = &catalog.channels()[0];
        (c.owner_sends, c.owner_receives)
    };
    assert_eq!(
        read(spec("2.5.0", "publish")),
        (true, false),
        "SpecMesh publish: owner writes"
    );
    assert_eq!(
        read(spec("2.6.0", "publish")),
        (false, true),
        "AsyncAPI publish: owner reads"
    );
    assert_eq!(read(spec("2.6.0", "subscribe")), (true, false));
    let forced = "asyncapi: '2.6.0'\nx-dialect: specmesh\nid: urn:acme.x\nchannels:\n  _public.a:\n    publish: {}\n";
    assert_eq!(
        read(forced.to_string()),
        (true, false),
        "x-dialect overrides detection"
    );
    let v3 = "asyncapi: 3.0.0\nid: urn:acme.x\nchannels:\n  a:\n    address: _public.a\noperations:\n  r:\n    action: receive\n    channel:\n      $ref: '#/channels/a'\n";
    assert_eq!(read(v3.to_string()), (false, true));
}
