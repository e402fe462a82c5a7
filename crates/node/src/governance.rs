//! The node's governance: the catalog of a specs directory as the router's [`Policy`], reloaded
//! on SIGHUP and `POST /v1/catalog/reload` without dropping a connection.
//!
//! The catalog in force is swapped whole (`arc-swap`), so a publish or a delivery reads one
//! consistent version without a lock. A reload whose specs have problems is refused with them,
//! and the previous catalog stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshgate_api::{
    CatalogView, ChannelView, ProducerView, ProductView, RefusedReload, SubscriberView,
};
use meshgate_broker::{Denied, DenyKind, Interest, Policy};
use meshgate_governance::{Catalog, Date, Problem, Refusal, RefusalKind, load};
use meshgate_topic::MqttFilter;
use parking_lot::Mutex;
use tracing::{info, warn};

/// The app id label of a client that did not authenticate.
const ANONYMOUS: &str = "anonymous";

/// The catalog in force and where it came from.
pub struct Governance {
    dir: PathBuf,
    catalog: ArcSwap<Catalog>,
    next_version: AtomicU64,
    /// The problems of the last refused reload, with its time (unix seconds).
    last_refused: Mutex<Option<(u64, Vec<String>)>>,
    /// The router governed, told to re-announce interest after a reload.
    broker: std::sync::OnceLock<meshgate_broker::Broker>,
}

/// Reads and builds the catalog of `dir`: the problems, if any, refuse it.
fn build(dir: &Path, version: u64) -> Result<Catalog, Vec<String>> {
    let sources = load::load_dir(dir)
        .map_err(|e| vec![format!("{}: cannot read the specs: {e}", dir.display())])?;
    let (catalog, problems) = Catalog::build(&sources, version);
    if problems.is_empty() {
        Ok(catalog)
    } else {
        Err(problems.iter().map(Problem::to_string).collect())
    }
}

impl Governance {
    /// Loads the specs of `dir`; an error lists every problem.
    pub fn load(dir: &Path) -> Result<Self, Vec<String>> {
        let catalog = build(dir, 1)?;
        info!(dir = %dir.display(), channels = catalog.channels().len(), "governance catalog loaded");
        Ok(Self {
            dir: dir.to_path_buf(),
            catalog: ArcSwap::from_pointee(catalog),
            next_version: AtomicU64::new(2),
            last_refused: Mutex::new(None),
            broker: std::sync::OnceLock::new(),
        })
    }

    /// Makes this the policy of `broker`.
    pub fn govern(self: &Arc<Self>, broker: &meshgate_broker::Broker) {
        broker.set_policy(self.clone());
        let _ = self.broker.set(broker.clone());
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Reads the specs again. On problems the catalog in force stays and they are returned.
    pub fn reload(&self) -> Result<u64, Vec<String>> {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        match build(&self.dir, version) {
            Ok(c) => {
                info!(
                    version,
                    channels = c.channels().len(),
                    "governance catalog reloaded"
                );
                self.catalog.store(Arc::new(c));
                *self.last_refused.lock() = None;
                // Interest that became readable (or stopped being) is announced (withdrawn).
                if let Some(b) = self.broker.get() {
                    let changed = b.refresh_advertised();
                    if changed > 0 {
                        info!(changed, "mesh interest updated for the new catalog");
                    }
                }
                Ok(version)
            }
            Err(problems) => {
                warn!(problems = ?problems, "governance specs refused; the previous catalog stays in force");
                metrics::counter!("meshgate_catalog_reloads_refused_total").increment(1);
                *self.last_refused.lock() =
                    Some((meshgate_broker::now_ms() / 1000, problems.clone()));
                Err(problems)
            }
        }
    }

    /// `GET /v1/catalog`: the catalog, and per channel its live subscribers (`interest`: the
    /// router's subscriptions, local and remote) and producers
    /// (`produced`: (app, topic, messages) of the last hour).
    pub fn view(&self, interest: &[Interest], produced: &[(String, String, u64)]) -> CatalogView {
        let c = self.catalog();
        let mut subscribers: Vec<Vec<SubscriberView>> = vec![Vec::new(); c.channels().len()];
        for i in interest {
            let Ok(f) = meshgate_topic::Filter::parse(&i.filter) else {
                continue;
            };
            for ch in c.overlapping(&f) {
                subscribers[ch.id.index()].push(SubscriberView {
                    filter: i.filter.clone(),
                    group: i.group.clone(),
                    app: i.app.clone(),
                    node: i.node.clone(),
                });
            }
        }
        let mut producers: Vec<Vec<ProducerView>> = vec![Vec::new(); c.channels().len()];
        for (app, topic, messages) in produced {
            if let Some(ch) = c.lookup(topic) {
                let list = &mut producers[ch.id.index()];
                match list.iter_mut().find(|p| p.app == *app) {
                    Some(p) => p.messages += messages,
                    None => list.push(ProducerView {
                        app: app.clone(),
                        messages: *messages,
                    }),
                }
            }
        }
        let products = c
            .products()
            .iter()
            .map(|p| ProductView {
                app: p.app.as_str().to_string(),
                file: p.file.clone(),
                dialect: p.dialect.as_str().to_string(),
                asyncapi: p.asyncapi.clone(),
                title: p.title.clone(),
                version: p.version.clone(),
                channels: p
                    .channels
                    .iter()
                    .filter_map(|id| c.channel(*id))
                    .map(|ch| ch.name.clone())
                    .collect(),
            })
            .collect();
        let channels = c
            .channels()
            .iter()
            .map(|ch| ChannelView {
                owner: ch.owner.as_str().to_string(),
                name: ch.name.clone(),
                address: ch.address.clone(),
                kind: format!("{:?}", ch.kind).to_lowercase(),
                topic: ch.mqtt_pattern(),
                kafka_topic: ch.kafka_topic.clone(),
                access: ch.access.as_str().to_string(),
                grants: ch.grants.iter().map(|g| g.as_str().to_string()).collect(),
                producers: ch
                    .producers
                    .iter()
                    .map(|g| g.as_str().to_string())
                    .collect(),
                eol: ch.eol.map(|d| d.to_string()),
                schema: ch.has_schema(),
                partitions: ch.kafka.partitions,
                subscribers: std::mem::take(&mut subscribers[ch.id.index()]),
                producers_last_hour: std::mem::take(&mut producers[ch.id.index()]),
            })
            .collect();
        let refused = self.last_refused.lock().clone();
        CatalogView {
            version: c.version(),
            specs_dir: self.dir.display().to_string(),
            products,
            channels,
            last_refused_reload: refused.map(|(at, problems)| RefusedReload { at, problems }),
        }
    }
}

/// Counts a refusal by app, operation and reason (labels: configured app ids only).
fn count(app: Option<&str>, op: &'static str, reason: &'static str) {
    let app = app.unwrap_or(ANONYMOUS).to_string();
    metrics::counter!("meshgate_governance_refusals_total", "app" => app, "op" => op, "reason" => reason)
        .increment(1);
}

fn denied(r: &Refusal) -> Denied {
    Denied {
        reason: r.reason(),
        message: r.to_string(),
        kind: match r.kind() {
            RefusalKind::NotAuthorized => DenyKind::NotAuthorized,
            RefusalKind::InvalidTopic => DenyKind::InvalidTopic,
            RefusalKind::InvalidPayload => DenyKind::InvalidPayload,
        },
    }
}

/// The answer to an anonymous client of a governed node: like any forbidden topic.
fn anonymous() -> Denied {
    Denied {
        reason: "anonymous",
        message: "not authorized".into(),
        kind: DenyKind::NotAuthorized,
    }
}

impl Policy for Governance {
    fn check_publish(&self, app: Option<&str>, topic: &str, payload: &[u8]) -> Result<(), Denied> {
        let Some(a) = app else {
            count(app, "publish", "anonymous");
            return Err(anonymous());
        };
        let today = Date::from_system_time(SystemTime::now());
        match self
            .catalog
            .load()
            .check_publish_payload(a, topic, payload, today)
        {
            Ok(_) => Ok(()),
            Err(r) => {
                count(app, "publish", r.reason());
                Err(denied(&r))
            }
        }
    }

    fn check_subscribe(&self, app: Option<&str>, filter: &MqttFilter) -> Result<(), Denied> {
        let Some(a) = app else {
            count(app, "subscribe", "anonymous");
            return Err(anonymous());
        };
        // Shared-subscription groups are named after the app (Galapagos): `<app>` or
        // `<app>.<anything>`, so one app cannot join another's group and take its events.
        if let Some(g) = &filter.group
            && !meshgate_governance::group_allowed(a, g)
        {
            count(app, "subscribe", "foreign_group");
            return Err(Denied {
                reason: "foreign_group",
                message: format!(
                    "shared subscription group {g:?} must be {a:?} or start with \"{a}.\""
                ),
                kind: DenyKind::NotAuthorized,
            });
        }
        match self.catalog.load().check_subscribe_mqtt(a, filter) {
            Ok(_) => Ok(()),
            Err(r) => {
                count(app, "subscribe", r.reason());
                Err(denied(&r))
            }
        }
    }

    fn may_read(&self, app: Option<&str>, topic: &str) -> bool {
        app.is_some_and(|a| self.catalog.load().may_read(a, topic))
    }

    fn advertise(&self, app: Option<&str>, filter: &meshgate_topic::Filter) -> bool {
        app.is_some_and(|a| self.catalog.load().advertisable_for(a, filter))
    }
}
