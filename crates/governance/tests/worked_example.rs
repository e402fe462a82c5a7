//! The worked example of GOVERNANCE.md on the SpecMesh README spec, plus publish rules.

mod common;

use meshgate_governance::{Access, Date, Denial, Dialect, Refusal, RefusalKind};
use meshgate_topic::{Filter, parse_mqtt_filter};

const OWNER: &str = "acme.lifestyle.onboarding";
const GRANTED: &str = "some.other.domain.root";
const OUTSIDER: &str = "acme.sales";

const SIGNED_UP: &str = "acme/lifestyle/onboarding/_public/user_signed_up";
const CHECKOUT: &str = "acme/lifestyle/onboarding/_private/user_checkout";
const PURCHASED: &str = "acme/lifestyle/onboarding/_protected/purchased";

fn f(text: &str) -> Filter {
    Filter::parse(text).unwrap()
}

fn day(text: &str) -> Date {
    Date::parse(text).unwrap()
}

#[test]
fn the_specmesh_readme_spec_is_read_as_specmesh() {
    let catalog = common::catalog("specmesh");
    let product = &catalog.products()[0];
    assert_eq!(product.app.as_str(), OWNER);
    assert_eq!(product.dialect, Dialect::SpecMesh);
    assert_eq!(product.title.as_deref(), Some("ACME Lifestyle Onboarding"));
    let signed_up = catalog.lookup(SIGNED_UP).unwrap();
    assert_eq!(
        signed_up.kafka_topic,
        "acme.lifestyle.onboarding._public.user_signed_up"
    );
    assert_eq!(signed_up.access, Access::Public);
    assert_eq!(signed_up.kafka.partitions, Some(3));
    assert_eq!(signed_up.kafka.replicas, Some(1));
    assert_eq!(signed_up.kafka.configs["cleanup.policy"], "delete");
    assert_eq!(signed_up.kafka.configs["retention.ms"], "999000");
    assert!(signed_up.has_schema());
    let purchased = catalog.lookup(PURCHASED).unwrap();
    assert_eq!(purchased.access, Access::Protected);
    assert_eq!(purchased.grants.len(), 1);
    assert_eq!(purchased.grants[0].as_str(), GRANTED);
    assert!(
        purchased
            .tags
            .iter()
            .any(|t| t == "grant-access:some.other.domain.root")
    );
    assert_eq!(purchased.messages[0].name.as_deref(), Some("Food Item"));
    assert_eq!(catalog.lookup(CHECKOUT).unwrap().access, Access::Private);
    assert!(
        catalog
            .lookup("acme/lifestyle/onboarding/_public")
            .is_none()
    );
    assert!(
        catalog
            .lookup("acme/lifestyle/onboarding/_public/user_signed_up/x")
            .is_none()
    );
}

#[test]
fn wildcard_over_the_product_is_accepted_for_all_and_filtered_by_may_read() {
    let catalog = common::catalog("mesh");
    let all = [SIGNED_UP, CHECKOUT, PURCHASED];
    let expect: [(&str, &[&str]); 3] = [
        (OWNER, &[SIGNED_UP, CHECKOUT, PURCHASED]),
        (GRANTED, &[SIGNED_UP, PURCHASED]),
        (OUTSIDER, &[SIGNED_UP]),
    ];
    for (app, readable) in expect {
        let grant = catalog
            .check_subscribe(app, &f("acme/lifestyle/onboarding/>"))
            .unwrap_or_else(|r| panic!("{app}: {r:?}"));
        assert_eq!(grant.version, catalog.version());
        let granted: Vec<&str> = grant
            .readable
            .iter()
            .map(|id| catalog.channel(*id).unwrap().pattern.as_str())
            .collect();
        let mut want: Vec<&str> = readable.to_vec();
        let mut got = granted.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "{app}");
        assert_eq!(grant.hidden, 3 - readable.len(), "{app}");
        for topic in all {
            assert_eq!(
                catalog.may_read(app, topic),
                readable.contains(&topic),
                "{app} {topic}"
            );
        }
    }
}

#[test]
fn naming_what_one_may_not_read_is_refused_whole() {
    let catalog = common::catalog("mesh");
    for app in [GRANTED, OUTSIDER] {
        for filter in [
            CHECKOUT,
            "acme/lifestyle/onboarding/_private/>",
            "acme/lifestyle/onboarding/_private/*",
            "acme/lifestyle/onboarding/_private/user_checkout/>",
        ] {
            let refusal = catalog.check_subscribe(app, &f(filter)).unwrap_err();
            assert!(
                matches!(refusal, Refusal::NotAuthorized(_)),
                "{app} {filter}"
            );
            assert_eq!(refusal.kind(), RefusalKind::NotAuthorized);
        }
    }
    assert_eq!(
        catalog.check_subscribe(OUTSIDER, &f(PURCHASED)),
        Err(Refusal::NotAuthorized(Denial::NotReadable))
    );
    assert!(catalog.check_subscribe(GRANTED, &f(PURCHASED)).is_ok());
    assert!(catalog.check_subscribe(OWNER, &f(CHECKOUT)).is_ok());
    assert!(
        catalog
            .check_subscribe(OWNER, &f("acme/lifestyle/onboarding/_private/>"))
            .is_ok()
    );
    // A literal subscription to a topic no channel has: the same refusal as a forbidden one.
    let unknown = catalog
        .check_subscribe(OUTSIDER, &f("acme/lifestyle/onboarding/_public/nope"))
        .unwrap_err();
    assert_eq!(unknown.reason(), "unknown_topic");
    assert_eq!(unknown.to_string(), "not authorized");
    // The protected scope without a channel name is accepted, but brings nothing to an
    // outsider, so it is not advertised.
    let grant = catalog
        .check_subscribe(OUTSIDER, &f("acme/lifestyle/onboarding/_protected/>"))
        .unwrap();
    assert!(grant.readable.is_empty());
    assert!(!grant.advertise());
    assert!(!catalog.advertisable_for(OUTSIDER, &f("acme/lifestyle/onboarding/_protected/>")));
    assert!(catalog.advertisable(&f("acme/lifestyle/onboarding/_protected/>")));
    assert!(!catalog.advertisable(&f("nobody/>")));
}

#[test]
fn an_outsider_wildcard_on_the_company_gets_public_topics_only() {
    let catalog = common::catalog("mesh");
    let grant = catalog
        .check_subscribe("stranger.app", &f("acme/>"))
        .unwrap();
    assert!(!grant.readable.is_empty());
    for id in &grant.readable {
        assert_eq!(catalog.channel(*id).unwrap().access, Access::Public);
    }
    let public = catalog.channels_with_access(Access::Public).count();
    assert_eq!(grant.readable.len(), public);
    // MQTT `acme/#` (native `acme` and `acme/>`) is judged on its wildcard part.
    let mqtt = catalog
        .check_subscribe_mqtt("stranger.app", &parse_mqtt_filter("acme/#").unwrap())
        .unwrap();
    assert_eq!(mqtt.readable, grant.readable);
    let private = parse_mqtt_filter("acme/sales/_private/#").unwrap();
    assert!(
        catalog
            .check_subscribe_mqtt("stranger.app", &private)
            .is_err()
    );
    assert!(catalog.check_subscribe_mqtt("acme.sales", &private).is_ok());
    let one = parse_mqtt_filter("acme/sales/_public/orders/+/s1").unwrap();
    assert_eq!(
        catalog
            .check_subscribe_mqtt("stranger.app", &one)
            .unwrap()
            .readable
            .len(),
        1
    );
}

#[test]
fn ownership_is_by_whole_segments() {
    let catalog = common::catalog("mesh");
    let owner = |t: &str| catalog.owner_of(t).map(|a| a.as_str().to_string());
    assert_eq!(
        owner("acme/userprops/_public/changes").as_deref(),
        Some("acme.userprops")
    );
    assert_eq!(
        owner("acme/user/_public/profile").as_deref(),
        Some("acme.user")
    );
    assert_eq!(owner("acme/user").as_deref(), Some("acme.user"));
    assert_eq!(owner("acme/userx/_public/profile"), None);
    assert_eq!(owner("acme"), None);
    assert_eq!(
        catalog
            .owner_of_kafka_topic("acme.userprops._public.changes")
            .map(|a| a.as_str()),
        Some("acme.userprops")
    );
    // acme.user reads nothing private of acme.userprops, and owns none of it.
    assert!(!catalog.may_read("acme.user", "acme/userprops/_private/props"));
    assert!(
        catalog
            .check_subscribe("acme.user", &f("acme/userprops/_private/props"))
            .is_err()
    );
    assert!(
        catalog
            .check_subscribe("acme.user", &f("acme/userprops/_private/>"))
            .is_err()
    );
    let now = day("2025-01-01");
    assert!(
        catalog
            .check_publish("acme.user", "acme/userprops/_public/changes", now)
            .is_err()
    );
    assert!(
        catalog
            .check_publish("acme.userprops", "acme/userprops/_public/changes", now)
            .is_ok()
    );
}

#[test]
fn publish_rules_in_order() {
    let catalog = common::catalog("mesh");
    let now = day("2025-06-01");
    // 1. Invalid or wildcard topics.
    for topic in ["acme/lifestyle/onboarding/_public/*", "a//b", "", "acme/#"] {
        let r = catalog.check_publish(OWNER, topic, now).unwrap_err();
        assert!(matches!(r, Refusal::InvalidTopic(_)), "{topic}");
        assert_eq!(
            (r.kind(), r.reason()),
            (RefusalKind::InvalidTopic, "invalid_topic")
        );
    }
    // 2 and 3. Unknown and forbidden look the same from outside.
    let unknown = catalog
        .check_publish(OWNER, "acme/lifestyle/onboarding/_public/nope", now)
        .unwrap_err();
    let forbidden = catalog.check_publish(GRANTED, SIGNED_UP, now).unwrap_err();
    assert_eq!(unknown.reason(), "unknown_topic");
    assert_eq!(forbidden.reason(), "not_writer");
    assert_eq!(unknown.to_string(), forbidden.to_string());
    assert_eq!(unknown.kind(), forbidden.kind());
    assert_eq!(forbidden.kind(), RefusalKind::NotAuthorized);
    // The owner writes; an x-producer writes public channels but not private ones.
    assert!(catalog.check_publish(OWNER, PURCHASED, now).is_ok());
    let order = "acme/sales/_public/orders/eu/s42";
    assert!(catalog.check_publish("acme.sales", order, now).is_ok());
    assert!(catalog.check_publish("acme.pos", order, now).is_ok());
    assert_eq!(
        catalog
            .check_publish("acme.pos", "acme/sales/_private/ledger", now)
            .unwrap_err(),
        Refusal::NotAuthorized(Denial::NotWriter)
    );
    assert_eq!(
        catalog
            .check_publish("acme.sales", "acme/sales/_public/orders/eu", now)
            .unwrap_err(),
        Refusal::NotAuthorized(Denial::UnknownTopic),
        "a parameter level is missing"
    );
}

#[test]
fn end_of_life() {
    let catalog = common::catalog("mesh");
    let legacy = "acme/sales/_public/legacy_orders";
    let before = catalog
        .check_publish("acme.sales", legacy, day("2029-12-31"))
        .unwrap();
    assert_eq!(before.deprecated_until, Some(day("2030-01-01")));
    let on_the_day = catalog
        .check_publish("acme.sales", legacy, day("2030-01-01"))
        .unwrap();
    assert!(on_the_day.deprecated_until.is_some());
    let after = catalog
        .check_publish("acme.sales", legacy, day("2030-01-02"))
        .unwrap_err();
    assert_eq!(
        after,
        Refusal::PastEol {
            eol: day("2030-01-01")
        }
    );
    assert_eq!(after.reason(), "past_eol");
    assert!(after.to_string().contains("2030-01-01"));
    // Not deprecated: not flagged.
    let fresh = catalog
        .check_publish(OWNER, SIGNED_UP, day("2029-12-31"))
        .unwrap();
    assert_eq!(fresh.deprecated_until, None);
    // A non-writer learns nothing about the EOL.
    let outsider = catalog
        .check_publish(OWNER, legacy, day("2031-01-01"))
        .unwrap_err();
    assert_eq!(outsider.reason(), "not_writer");
}

#[test]
fn payloads_are_checked_against_the_schema() {
    let catalog = common::catalog("mesh");
    let now = day("2025-06-01");
    // Avro, in the Avro JSON encoding.
    let ok = br#"{"fullName": "Ada", "email": "ada@example.com", "age": 36}"#;
    assert!(
        catalog
            .check_publish_payload(OWNER, SIGNED_UP, ok, now)
            .is_ok()
    );
    let bad = br#"{"fullName": "Ada", "email": "ada@example.com", "age": "36"}"#;
    let r = catalog
        .check_publish_payload(OWNER, SIGNED_UP, bad, now)
        .unwrap_err();
    assert_eq!(
        (r.reason(), r.kind()),
        ("schema", RefusalKind::InvalidPayload)
    );
    assert!(r.to_string().contains("/age"), "{r}");
    // JSON Schema from a YAML file.
    assert!(
        catalog
            .check_publish_payload(OWNER, CHECKOUT, br#"{"id": "c1", "amount": 3.5}"#, now)
            .is_ok()
    );
    let r = catalog
        .check_publish_payload(OWNER, CHECKOUT, br#"{"id": "c1", "amount": -1}"#, now)
        .unwrap_err();
    assert_eq!(r.reason(), "schema");
    let r = catalog
        .check_publish_payload(OWNER, CHECKOUT, b"not json", now)
        .unwrap_err();
    assert_eq!(r.reason(), "schema");
    // Inline JSON Schema.
    let order = "acme/sales/_public/orders/eu/s42";
    assert!(
        catalog
            .check_publish_payload("acme.pos", order, br#"{"id": "o1", "total": 9}"#, now)
            .is_ok()
    );
    assert!(
        catalog
            .check_publish_payload("acme.pos", order, br#"{"id": "o1"}"#, now)
            .is_err()
    );
    // No schema: anything goes.
    assert!(
        catalog
            .check_publish_payload(OWNER, PURCHASED, b"\x00binary", now)
            .is_ok()
    );
    // The authorisation comes first: a stranger's bad payload is "not authorized".
    let r = catalog
        .check_publish_payload(GRANTED, SIGNED_UP, b"x", now)
        .unwrap_err();
    assert_eq!(r.reason(), "not_writer");
}

#[test]
fn channel_parameters_add_levels() {
    let catalog = common::catalog("mesh");
    let orders = catalog.lookup("acme/sales/_public/orders/eu/s42").unwrap();
    assert_eq!(orders.pattern.as_str(), "acme/sales/_public/orders/*/*");
    assert_eq!(orders.mqtt_pattern(), "acme/sales/_public/orders/+/+");
    assert_eq!(orders.kafka_topic, "acme.sales._public.orders");
    assert_eq!(orders.address, "_public.orders/{region}/{store}");
    let sources: Vec<_> = orders
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.source.clone()))
        .collect();
    assert_eq!(
        sources,
        [
            (
                "region",
                meshgate_governance::ParamSource::Header("region".into())
            ),
            ("store", meshgate_governance::ParamSource::Key),
        ]
    );
    assert_eq!(
        orders.parameters[0].description.as_deref(),
        Some("Sales region")
    );
    assert_eq!(orders.producers[0].as_str(), "acme.pos");
    assert!(catalog.may_read("anyone", "acme/sales/_public/orders/us/s1"));
    assert!(!catalog.may_read("anyone", "acme/sales/_public/orders/us"));
    assert!(!catalog.may_read("anyone", "acme/sales/_public/orders/us/s1/x"));
    let refunds = catalog.lookup("acme/sales/_protected/refunds").unwrap();
    assert!(refunds.is_readable_by("acme.finance"));
    assert!(!refunds.is_readable_by("acme.pos"));
}
