//! `spec validate --previous` (compatibility) and `spec plan` (Kafka provisioning).

mod common;

use std::collections::BTreeMap;

use meshgate_governance::{
    Catalog, Date, ExistingTopic, Plan, Sources, check_compatible, check_compatible_at, plan,
};

const AVRO_V1: &str = r#"{"type": "record", "name": "U", "fields": [
    {"name": "id", "type": "string"}, {"name": "age", "type": "int"}]}"#;

fn spec(partitions: u32, extra_channel: bool, eol: Option<&str>) -> String {
    let mut s = format!(
        "asyncapi: '2.5.0'
id: urn:acme.shop
channels:
  _public.users:
    bindings:
      kafka:
        partitions: {partitions}
        configs:
          retention.ms: 1000
    publish:
      message:
        payload:
          $ref: /users.avsc
  _public.carts:
    publish:
      message:
        payload:
          $ref: /carts.json
"
    );
    if extra_channel {
        s.push_str("  _public.extra:\n    publish: {}\n");
        if let Some(eol) = eol {
            s.push_str(&format!("    x-deprecated:\n      eol: '{eol}'\n"));
        }
    }
    s
}

fn build(spec: &str, avro: &str, json: &str) -> Catalog {
    let mut s = Sources::new();
    s.insert("shop.yaml", spec);
    s.insert("users.avsc", avro);
    s.insert("carts.json", json);
    let (catalog, problems) = Catalog::build(&s, 1);
    assert!(problems.is_empty(), "{problems:#?}");
    catalog
}

const CART_V1: &str = r#"{"type": "object", "required": ["id", "items"],
    "properties": {"id": {"type": "string"}, "items": {"type": "array", "items": {"type": "string"}}}}"#;

#[test]
fn compatible_evolution_passes() {
    let before = build(&spec(3, false, None), AVRO_V1, CART_V1);
    // Avro: a new field with a default... and even without one: old readers ignore it.
    let avro_v2 = r#"{"type": "record", "name": "U", "fields": [
        {"name": "id", "type": "string"}, {"name": "age", "type": "int"},
        {"name": "email", "type": ["null", "string"], "default": null}]}"#;
    // JSON: a new optional property.
    let cart_v2 = r#"{"type": "object", "required": ["id", "items"],
        "properties": {"id": {"type": "string"}, "items": {"type": "array", "items": {"type": "string"}},
                       "note": {"type": "string"}}}"#;
    let after = build(&spec(6, true, None), avro_v2, cart_v2);
    assert_eq!(check_compatible(&before, &after), vec![]);
}

#[test]
fn breaking_changes_are_reported() {
    let before = build(&spec(6, true, None), AVRO_V1, CART_V1);
    // Avro: `age` removed; old readers need it (no default).
    let avro_v2 =
        r#"{"type": "record", "name": "U", "fields": [{"name": "id", "type": "string"}]}"#;
    // JSON: `items` no longer required, and `id` became a number.
    let cart_v2 = r#"{"type": "object", "required": ["id"],
        "properties": {"id": {"type": "number"}, "items": {"type": "array"}}}"#;
    let after = build(&spec(3, false, None), avro_v2, cart_v2);
    let problems = check_compatible(&before, &after);
    let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
    assert!(
        has("shop.yaml:4: channel \"_public.users\": partitions cannot shrink from 6 to 3"),
        "{messages:#?}"
    );
    assert!(
        has("shop.yaml:4: channel \"_public.users\": Avro schema is not readable"),
        "{messages:#?}"
    );
    assert!(
        has("shop.yaml:14: channel \"_public.carts\": /: property \"items\" is no longer required"),
        "{messages:#?}"
    );
    assert!(has("/properties/id: type changed"), "{messages:#?}");
    assert!(
        has("shop.yaml:19: channel \"_public.extra\" was removed"),
        "{messages:#?}"
    );
    assert_eq!(problems.len(), 5, "{messages:#?}");
}

#[test]
fn eol_lets_a_channel_go_after_notice() {
    let today = Date::parse("2026-01-01").unwrap();
    let v1 = build(&spec(3, true, None), AVRO_V1, CART_V1);
    // Deprecating with too short a notice is reported; with three months it is fine.
    let short = build(&spec(3, true, Some("2026-02-01")), AVRO_V1, CART_V1);
    let problems = check_compatible_at(&v1, &short, today);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].message.contains("less than 90 days"));
    let long = build(&spec(3, true, Some("2026-04-01")), AVRO_V1, CART_V1);
    assert_eq!(check_compatible_at(&v1, &long, today), vec![]);
    // Removing it before its EOL is a problem, after its EOL it is not.
    let gone = build(&spec(3, false, None), AVRO_V1, CART_V1);
    assert_eq!(check_compatible_at(&long, &gone, today).len(), 1);
    assert_eq!(
        check_compatible_at(&long, &gone, Date::parse("2026-04-02").unwrap()),
        vec![]
    );
}

fn existing(name: &str, partitions: u32, configs: &[(&str, &str)]) -> ExistingTopic {
    ExistingTopic {
        name: name.to_string(),
        partitions,
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// What applying a plan leaves on the cluster.
fn apply(existing: &[ExistingTopic], plan: &Plan) -> Vec<ExistingTopic> {
    let mut out: BTreeMap<String, ExistingTopic> = existing
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for t in &plan.create {
        out.insert(
            t.name.clone(),
            ExistingTopic {
                name: t.name.clone(),
                partitions: t.partitions.unwrap_or(1),
                configs: t.configs.clone(),
            },
        );
    }
    for c in &plan.increase_partitions {
        out.get_mut(&c.name).unwrap().partitions = c.to;
    }
    for c in &plan.update_configs {
        out.get_mut(&c.name)
            .unwrap()
            .configs
            .insert(c.key.clone(), c.to.clone());
    }
    out.into_values().collect()
}

#[test]
fn plan_creates_grows_and_never_shrinks() {
    let catalog = common::catalog("mesh");
    let cluster = vec![
        // Exists with fewer partitions and a stale config.
        existing(
            "acme.lifestyle.onboarding._public.user_signed_up",
            1,
            &[("retention.ms", "1"), ("segment.ms", "5")],
        ),
        // Would shrink from 12 to 6: refused.
        existing("acme.sales._public.orders", 12, &[]),
        // Foreign topics, and an owner's topic no spec declares: untouched.
        existing("payments.ledger", 3, &[]),
        existing("acme.userx.things", 3, &[]),
        existing("acme.user.legacy_thing", 3, &[]),
    ];
    let p = plan(&catalog, &cluster);
    let created: Vec<&str> = p.create.iter().map(|t| t.name.as_str()).collect();
    assert!(created.contains(&"acme.lifestyle.onboarding._private.user_checkout"));
    assert!(created.contains(&"acme.sales._public.legacy_orders"));
    assert_eq!(created.len(), catalog.channels().len() - 2);
    assert!(
        !created
            .iter()
            .any(|n| n.contains("payments") || n.contains("userx"))
    );
    assert_eq!(p.increase_partitions.len(), 1);
    assert_eq!(
        p.increase_partitions[0].name,
        "acme.lifestyle.onboarding._public.user_signed_up"
    );
    assert_eq!(
        (p.increase_partitions[0].from, p.increase_partitions[0].to),
        (1, 3)
    );
    assert_eq!(p.refused.len(), 1);
    assert_eq!(
        (
            p.refused[0].name.as_str(),
            p.refused[0].from,
            p.refused[0].to
        ),
        ("acme.sales._public.orders", 12, 6)
    );
    let updates: Vec<(&str, Option<&str>, &str)> = p
        .update_configs
        .iter()
        .map(|c| (c.key.as_str(), c.from.as_deref(), c.to.as_str()))
        .collect();
    assert_eq!(
        updates,
        [
            ("cleanup.policy", None, "delete"),
            ("retention.ms", Some("1"), "999000")
        ]
    );
    assert_eq!(p.unmanaged, ["acme.user.legacy_thing"]);
    let text = p.to_string();
    assert!(
        text.contains(
            "+ create acme.sales._public.legacy_orders (partitions: default, replicas: default)"
        ),
        "{text}"
    );
    assert!(
        text.contains("~ partitions acme.lifestyle.onboarding._public.user_signed_up: 1 -> 3"),
        "{text}"
    );
    assert!(
        text.contains(
            "! refused: partitions of acme.sales._public.orders cannot shrink from 12 to 6"
        ),
        "{text}"
    );
    // The plan is data: it survives JSON.
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);

    // Planning again against the applied state changes nothing (the refusal stays).
    let applied = apply(&cluster, &p);
    let again = plan(&catalog, &applied);
    assert!(again.is_empty(), "{again}");
    assert_eq!(again.refused, p.refused);
    assert!(
        apply(&applied, &again)
            .iter()
            .any(|t| t.name == "payments.ledger" && t.partitions == 3)
    );
}

#[test]
fn an_empty_cluster_gets_every_channel() {
    let catalog = common::catalog("specmesh");
    let p = plan(&catalog, &[]);
    assert_eq!(p.create.len(), 3);
    let signed_up = p
        .create
        .iter()
        .find(|t| t.name.ends_with("user_signed_up"))
        .unwrap();
    assert_eq!(
        (signed_up.partitions, signed_up.replicas),
        (Some(3), Some(1))
    );
    let again = plan(&catalog, &apply(&[], &p));
    assert!(again.is_empty());
    assert_eq!(again.to_string(), "no changes\n");
}
