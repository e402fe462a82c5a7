//! The Kafka provisioning plan (`spec plan` / `spec apply`): pure, from the catalog and the
//! topics that exist.
//!
//! Only topics in an owner's namespace (`<owner app id>.`) are considered; nothing is ever
//! deleted, partitions only grow, and only the configs a spec names are set (others keep the
//! broker's value).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;

/// A topic that exists on the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingTopic {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Its configs (at least the ones set explicitly).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTopic {
    /// Topic name.
    pub name: String,
    /// Partitions; `None` for the broker default.
    pub partitions: Option<u32>,
    /// Replication factor; `None` for the broker default.
    pub replicas: Option<u16>,
    /// Configs to set.
    pub configs: BTreeMap<String, String>,
}

/// A partition count change (applied when it grows, refused when it would shrink).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChange {
    /// Topic name.
    pub name: String,
    /// Current count.
    pub from: u32,
    /// Count the spec asks for.
    pub to: u32,
}

/// One config to set on an existing topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// Topic name.
    pub name: String,
    /// Config key.
    pub key: String,
    /// Current value, if set.
    pub from: Option<String>,
    /// New value.
    pub to: String,
}

/// What `spec apply` would do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Topics to create.
    pub create: Vec<PlannedTopic>,
    /// Partition counts to raise.
    pub increase_partitions: Vec<PartitionChange>,
    /// Configs to set.
    pub update_configs: Vec<ConfigChange>,
    /// Partition counts a spec would lower: refused, Kafka cannot shrink a topic.
    pub refused: Vec<PartitionChange>,
    /// Existing topics in an owner's namespace that no spec declares: left alone.
    pub unmanaged: Vec<String>,
}

impl Plan {
    /// True when there is nothing to apply (refusals and unmanaged topics aside).
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.increase_partitions.is_empty()
            && self.update_configs.is_empty()
    }
}

/// Plans the changes that make the cluster match the catalog.
pub fn plan(catalog: &Catalog, existing: &[ExistingTopic]) -> Plan {
    let mut plan = Plan::default();
    let by_name: HashMap<&str, &ExistingTopic> =
        existing.iter().map(|t| (t.name.as_str(), t)).collect();
    for channel in catalog.channels() {
        let want = &channel.kafka;
        let Some(have) = by_name.get(channel.kafka_topic.as_str()) else {
            plan.create.push(PlannedTopic {
                name: channel.kafka_topic.clone(),
                partitions: want.partitions,
                replicas: want.replicas,
                configs: want.configs.clone(),
            });
            continue;
        };
        if let Some(to) = want.partitions {
            let change = PartitionChange {
                name: channel.kafka_topic.clone(),
                from: have.partitions,
                to,
            };
            if to > have.partitions {
                plan.increase_partitions.push(change);
            } else if to < have.partitions {
                plan.refused.push(change);
            }
        }
        for (key, to) in &want.configs {
            let from = have.configs.get(key);
            if from != Some(to) {
                plan.update_configs.push(ConfigChange {
                    name: channel.kafka_topic.clone(),
                    key: key.clone(),
                    from: from.cloned(),
                    to: to.clone(),
                });
            }
        }
    }
    for topic in existing {
        let owned = catalog
            .owner_of_kafka_topic(&topic.name)
            .is_some_and(|o| topic.name.len() > o.as_str().len());
        if owned && catalog.channel_by_kafka_topic(&topic.name).is_none() {
            plan.unmanaged.push(topic.name.clone());
        }
    }
    plan
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".into());
        for t in &self.create {
            write!(
                f,
                "+ create {} (partitions: {}, replicas: {})",
                t.name,
                or_default(t.partitions.map(|p| p.to_string())),
                or_default(t.replicas.map(|r| r.to_string())),
            )?;
            for (k, v) in &t.configs {
                write!(f, " {k}={v}")?;
            }
            writeln!(f)?;
        }
        for c in &self.increase_partitions {
            writeln!(f, "~ partitions {}: {} -> {}", c.name, c.from, c.to)?;
        }
        for c in &self.update_configs {
            writeln!(
                f,
                "~ config {} {}: {} -> {}",
                c.name,
                c.key,
                c.from.as_deref().unwrap_or("(unset)"),
                c.to
            )?;
        }
        for c in &self.refused {
            writeln!(
                f,
                "! refused: partitions of {} cannot shrink from {} to {}",
                c.name, c.from, c.to
            )?;
        }
        for name in &self.unmanaged {
            writeln!(f, "  unmanaged (left alone): {name}")?;
        }
        if self.is_empty() && self.refused.is_empty() {
            writeln!(f, "no changes")?;
        }
        Ok(())
    }
}
