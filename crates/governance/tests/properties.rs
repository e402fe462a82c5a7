//! Seeded property tests over random catalogs, apps, topics and filters.

use meshgate_governance::{Access, Catalog, Channel, Date, Refusal, RefusalKind, Sources};
use meshgate_topic::Filter;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Segments of app ids and channel names: prefixes of each other on purpose (`user`,
/// `userprops`), so that raw-prefix ownership bugs show.
const SEGMENTS: [&str; 5] = ["a", "ab", "b", "user", "userprops"];
const MARKERS: [&str; 4] = ["_public", "_protected", "_private", ""];

#[derive(Clone, Debug)]
struct ChannelSpec {
    marker: usize,
    name: Vec<usize>,
    params: usize,
    grants: Vec<usize>,
    producer: Option<usize>,
}

fn app_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..SEGMENTS.len(), 1..=3)
}

fn channel_strategy() -> impl Strategy<Value = ChannelSpec> {
    (
        0..MARKERS.len(),
        prop::collection::vec(0..SEGMENTS.len(), 1..=2),
        0usize..=2,
        prop::collection::vec(0usize..8, 0..=2),
        prop::option::of(0usize..8),
    )
        .prop_map(|(marker, name, params, grants, producer)| ChannelSpec {
            marker,
            name,
            params,
            grants,
            producer,
        })
}

fn catalog_strategy() -> impl Strategy<Value = Vec<(Vec<usize>, Vec<ChannelSpec>)>> {
    prop::collection::vec(
        (
            app_strategy(),
            prop::collection::vec(channel_strategy(), 0..=4),
        ),
        1..=5,
    )
}

fn join(segments: &[usize], sep: &str) -> String {
    segments
        .iter()
        .map(|&i| SEGMENTS[i])
        .collect::<Vec<_>>()
        .join(sep)
}

/// App ids that may appear: the owners, plus two that own nothing.
fn app_pool(spec: &[(Vec<usize>, Vec<ChannelSpec>)]) -> Vec<String> {
    let mut apps: Vec<String> = spec.iter().map(|(a, _)| join(a, ".")).collect();
    apps.push("x.granted".into());
    apps.push("stranger".into());
    apps
}

fn build(spec: &[(Vec<usize>, Vec<ChannelSpec>)]) -> Catalog {
    let pool = app_pool(spec);
    let mut sources = Sources::new();
    for (i, (app, channels)) in spec.iter().enumerate() {
        let mut text = format!("asyncapi: '2.5.0'\nid: urn:{}\nchannels:\n", join(app, "."));
        for c in channels {
            let mut name = MARKERS[c.marker].to_string();
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(&join(&c.name, "."));
            for p in 0..c.params {
                name.push_str(&format!("/{{p{p}}}"));
            }
            text.push_str(&format!("  '{name}':\n"));
            if let Some(p) = c.producer {
                text.push_str(&format!("    x-producers: ['{}']\n", pool[p % pool.len()]));
            }
            text.push_str("    publish:\n      tags:\n");
            for g in &c.grants {
                text.push_str(&format!(
                    "        - name: 'grant-access:{}'\n",
                    pool[g % pool.len()]
                ));
            }
            if c.grants.is_empty() {
                text.push_str("        - name: plain\n");
            }
        }
        sources.insert(format!("f{i}.yaml"), text);
    }
    // Conflicting random specs produce problems; the catalog keeps what is valid.
    Catalog::build(&sources, 1).0
}

/// The reference for `may_read`: scan every channel, match with the topic crate's filter.
fn naive_may_read(catalog: &Catalog, app: &str, topic: &str) -> bool {
    catalog.channels().iter().any(|c| {
        c.pattern.matches(topic)
            && (c.owner == *app
                || c.access == Access::Public
                || (c.access == Access::Protected && c.grants.iter().any(|g| *g == *app)))
    })
}

/// The reference for `owner_of`: the longest owner whose segments start the topic's levels.
fn naive_owner(catalog: &Catalog, topic: &str) -> Option<String> {
    let levels: Vec<&str> = topic.split('/').collect();
    catalog
        .products()
        .iter()
        .map(|p| p.app.as_str())
        .filter(|app| {
            let segs: Vec<&str> = app.split('.').collect();
            segs.len() <= levels.len() && segs == levels[..segs.len()]
        })
        .max_by_key(|app| app.len())
        .map(str::to_string)
}

/// A concrete topic of a channel.
fn sample(c: &Channel) -> String {
    let mut t = c.mesh_base.clone();
    for _ in &c.parameters {
        t.push_str("/v");
    }
    t
}

fn level_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..SEGMENTS.len()).prop_map(|i| SEGMENTS[i].to_string()),
        (0..3usize).prop_map(|i| MARKERS[i].to_string()),
        Just("v".to_string()),
    ]
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(level_strategy(), 1..=6).prop_map(|l| l.join("/"))
}

fn filter_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![
                4 => level_strategy(),
                1 => Just("*".to_string()),
                1 => Just("u*".to_string()),
                1 => Just("_p*".to_string()),
            ],
            1..=5,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut levels, rest)| {
            if rest {
                levels.push(">".into());
            }
            levels.join("/")
        })
}

fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x6d65_7368),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ownership_is_segment_exact(spec in catalog_strategy(), topics in prop::collection::vec(topic_strategy(), 1..20)) {
        let catalog = build(&spec);
        let mut topics = topics;
        topics.extend(catalog.channels().iter().map(sample));
        for topic in &topics {
            let got = catalog.owner_of(topic).map(|a| a.as_str().to_string());
            prop_assert_eq!(got, naive_owner(&catalog, topic), "topic {}", topic);
        }
        for c in catalog.channels() {
            // Every catalog channel is owned by its own app, found by whole segments.
            prop_assert_eq!(catalog.owner_of(&sample(c)), Some(&c.owner));
            prop_assert_eq!(catalog.owner_of_kafka_topic(&c.kafka_topic), Some(&c.owner));
        }
    }

    #[test]
    fn may_read_matches_the_reference(spec in catalog_strategy(), app in 0usize..8, topics in prop::collection::vec(topic_strategy(), 1..20)) {
        let catalog = build(&spec);
        let pool = app_pool(&spec);
        let app = &pool[app % pool.len()];
        let mut topics = topics;
        topics.extend(catalog.channels().iter().map(sample));
        for topic in &topics {
            prop_assert_eq!(catalog.may_read(app, topic), naive_may_read(&catalog, app, topic), "{} {}", app, topic);
        }
    }

    #[test]
    fn accepted_subscriptions_never_yield_unreadable_topics(spec in catalog_strategy(), app in 0usize..8, filters in prop::collection::vec(filter_strategy(), 1..10)) {
        let catalog = build(&spec);
        let pool = app_pool(&spec);
        let app = &pool[app % pool.len()];
        let mut filters: Vec<String> = filters;
        filters.extend(catalog.channels().iter().map(sample));
        filters.extend(catalog.channels().iter().map(|c| c.pattern.as_str().to_string()));
        for text in &filters {
            let Ok(filter) = Filter::parse(text) else { continue };
            match catalog.check_subscribe(app, &filter) {
                Ok(grant) => {
                    if filter.is_literal() {
                        prop_assert!(catalog.may_read(app, text), "literal {} accepted for {}", text, app);
                    }
                    for c in catalog.channels() {
                        let topic = sample(c);
                        if !filter.matches(&topic) {
                            continue;
                        }
                        let listed = grant.readable.contains(&c.id);
                        prop_assert_eq!(listed, catalog.may_read(app, &topic), "{} {} {}", app, text, topic);
                        prop_assert_eq!(listed, c.is_readable_by(app));
                    }
                    for id in &grant.readable {
                        prop_assert!(catalog.channel(*id).unwrap().is_readable_by(app));
                    }
                    prop_assert_eq!(grant.advertise(), catalog.advertisable_for(app, &filter));
                }
                Err(refusal) => {
                    prop_assert!(matches!(refusal, Refusal::NotAuthorized(_)));
                    // Only another owner's scope, or an unreadable literal topic, is refused.
                    if filter.is_literal() {
                        prop_assert!(!catalog.may_read(app, text));
                    } else {
                        let owner = catalog.owner_of(text.split(['*', '>']).next().unwrap_or_default().trim_end_matches('/'));
                        prop_assert!(owner.is_some_and(|o| *o != **app), "{} refused {}", app, text);
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_and_forbidden_publishes_look_the_same(spec in catalog_strategy(), app in 0usize..8, topics in prop::collection::vec(topic_strategy(), 1..20)) {
        let catalog = build(&spec);
        let pool = app_pool(&spec);
        let app = &pool[app % pool.len()];
        let mut topics = topics;
        topics.extend(catalog.channels().iter().map(sample));
        let now = Date::parse("2025-01-01").unwrap();
        for topic in &topics {
            let expected_ok = catalog.lookup(topic).is_some_and(|c| c.is_writable_by(app));
            match catalog.check_publish(app, topic, now) {
                Ok(accepted) => {
                    prop_assert!(expected_ok);
                    prop_assert!(accepted.channel.pattern.matches(topic));
                }
                Err(refusal) => {
                    prop_assert!(!expected_ok);
                    prop_assert!(matches!(refusal, Refusal::NotAuthorized(_)), "{:?}", refusal);
                    prop_assert_eq!(
                        (refusal.to_string(), refusal.kind()),
                        ("not authorized".to_string(), RefusalKind::NotAuthorized)
                    );
                    let unknown = catalog.lookup(topic).is_none();
                    prop_assert_eq!(refusal.reason(), if unknown { "unknown_topic" } else { "not_writer" });
                }
            }
        }
    }
}
