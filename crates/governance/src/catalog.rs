//! The catalog: every data product and channel of a specs directory, with the indexes that make
//! the per-event checks cheap.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use serde::Serialize;

use crate::app::AppId;
use crate::model::{Channel, ChannelId, DataProduct};
use crate::parse::{is_spec, parse_spec};
use crate::problem::Problem;
use crate::sources::Sources;
use crate::yaml::Doc;

/// Every data product and channel of a specs directory.
///
/// Immutable once built. The node swaps in a new catalog on reload; its caller-chosen
/// [`version`](Catalog::version) lets per-subscription caches know when to re-check.
#[derive(Clone, Debug, Serialize)]
pub struct Catalog {
    version: u64,
    products: Vec<DataProduct>,
    channels: Vec<Channel>,
    #[serde(skip)]
    index: Index,
}

/// Lookup tables, built once.
#[derive(Clone, Debug, Default)]
struct Index {
    /// Channel by the literal part of its mesh pattern (`acme/sales/_public/orders`).
    by_base: HashMap<Box<str>, u32, RandomState>,
    /// Bit `k` set when some channel has `k` parameters.
    param_counts: u128,
    /// Largest parameter count.
    max_params: usize,
    /// Owner app by its mesh prefix (`acme/lifestyle/onboarding`).
    owners: HashMap<Box<str>, AppId, RandomState>,
    /// Owner app by its id (`acme.lifestyle.onboarding`), for Kafka names.
    owners_dotted: HashMap<Box<str>, AppId, RandomState>,
    /// Most levels of an owner app id.
    max_owner_levels: usize,
}

/// Checks a specs directory and returns every problem found (empty when it is valid).
pub fn validate(sources: &Sources) -> Vec<Problem> {
    Catalog::build(sources, 0).1
}

impl Catalog {
    /// A catalog without products: nothing may be published, nothing read.
    pub fn empty(version: u64) -> Catalog {
        Catalog {
            version,
            products: Vec::new(),
            channels: Vec::new(),
            index: Index::default(),
        }
    }

    /// Builds the catalog of a specs directory. Files and channels with problems are left out
    /// and their problems returned: a caller that must not run on a partial catalog refuses it
    /// when the list is not empty.
    pub fn build(sources: &Sources, version: u64) -> (Catalog, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut parsed: Vec<(DataProduct, Vec<Channel>)> = Vec::new();
        for (file, text) in sources.iter() {
            let is_doc = [".yaml", ".yml", ".json"].iter().any(|e| file.ends_with(e));
            if !is_doc {
                continue;
            }
            let doc = match Doc::parse(text) {
                Ok(doc) => doc,
                Err(e) => {
                    problems.push(Problem::new(
                        file,
                        e.line,
                        format!("syntax error: {}", e.message),
                    ));
                    continue;
                }
            };
            if !is_spec(&doc) {
                continue;
            }
            if let Some(p) = parse_spec(file, &doc, sources, &mut problems) {
                parsed.push(p);
            }
        }

        // Owners first: a channel must not fall in the namespace of a longer owner id.
        let mut owners: HashMap<Box<str>, AppId, RandomState> = HashMap::default();
        for (product, _) in &parsed {
            owners.insert(product.app.mesh_prefix().into(), product.app.clone());
        }
        let max_owner_levels = owners
            .keys()
            .map(|k| k.split('/').count())
            .max()
            .unwrap_or(0);
        let owner_index = Index {
            owners,
            max_owner_levels,
            ..Index::default()
        };

        let mut catalog = Catalog::empty(version);
        let mut by_kafka: HashMap<String, (String, u32), RandomState> = HashMap::default();
        for (mut product, channels) in parsed {
            for mut channel in channels {
                match owner_index.owner_of(&channel.mesh_base) {
                    Some(owner) if *owner == channel.owner => {}
                    Some(other) => {
                        problems.push(Problem::new(
                            &channel.file,
                            channel.line,
                            format!(
                                "channel {:?} of {} is in the namespace of app {other}",
                                channel.address, channel.owner
                            ),
                        ));
                        continue;
                    }
                    // The channel's own owner is always in the table.
                    None => continue,
                }
                if let Some((file, line)) = by_kafka.get(&channel.kafka_topic) {
                    problems.push(Problem::new(
                        &channel.file,
                        channel.line,
                        format!(
                            "duplicate channel: Kafka topic {:?} is already defined at {file}:{line}",
                            channel.kafka_topic
                        ),
                    ));
                    continue;
                }
                by_kafka.insert(
                    channel.kafka_topic.clone(),
                    (channel.file.clone(), channel.line),
                );
                if let Some(other) = catalog.channels.iter().find(|c| overlaps(c, &channel)) {
                    problems.push(Problem::new(
                        &channel.file,
                        channel.line,
                        format!(
                            "channel {:?} overlaps channel {:?} ({}:{}): a topic would match both",
                            channel.pattern.as_str(),
                            other.pattern.as_str(),
                            other.file,
                            other.line
                        ),
                    ));
                }
                let id = ChannelId(catalog.channels.len() as u32);
                channel.id = id;
                product.channels.push(id);
                catalog.channels.push(channel);
            }
            catalog.products.push(product);
        }
        catalog.index = owner_index;
        catalog.index_channels();
        // Stable: problems of one line keep the order they were found in.
        problems.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        (catalog, problems)
    }

    fn index_channels(&mut self) {
        for c in &self.channels {
            let k = c.parameters.len();
            self.index
                .by_base
                .insert(c.mesh_base.as_str().into(), c.id.0);
            self.index.param_counts |= 1u128 << k.min(127);
            self.index.max_params = self.index.max_params.max(k);
        }
        self.index.owners_dotted = self
            .index
            .owners
            .values()
            .map(|a| (a.as_str().into(), a.clone()))
            .collect();
    }

    /// The version given when the catalog was built.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The data products, one per spec file, ordered by file.
    pub fn products(&self) -> &[DataProduct] {
        &self.products
    }

    /// Every channel; [`ChannelId::index`] is the position in this slice.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// One channel.
    pub fn channel(&self, id: ChannelId) -> Option<&Channel> {
        self.channels.get(id.index())
    }

    /// The channel whose Kafka topic is `name`.
    pub fn channel_by_kafka_topic(&self, name: &str) -> Option<&Channel> {
        let prefix = name.replace('.', "/");
        self.index
            .by_base
            .get(prefix.as_str())
            .map(|&i| &self.channels[i as usize])
    }

    /// The channel a concrete mesh topic belongs to, if any. Allocation-free: one hash lookup
    /// per distinct parameter count in the catalog. The topic is assumed valid
    /// ([`meshgate_topic::validate_topic`]).
    #[inline]
    pub fn lookup(&self, topic: &str) -> Option<&Channel> {
        let mut base = topic;
        let mut k = 0;
        loop {
            if self.index.param_counts & (1u128 << k) != 0
                && let Some(&i) = self.index.by_base.get(base)
            {
                let c = &self.channels[i as usize];
                if c.parameters.len() == k {
                    return Some(c);
                }
            }
            if k >= self.index.max_params {
                return None;
            }
            base = &base[..base.rfind('/')?];
            k += 1;
        }
    }

    /// The owner of a mesh topic: the longest owner app id whose levels start the topic
    /// (segment-exact: `acme.user` does not own `acme/userprops/x`). Works for filters' literal
    /// prefixes too. Allocation-free.
    pub fn owner_of(&self, topic: &str) -> Option<&AppId> {
        self.index.owner_of(topic)
    }

    /// The owner of a Kafka topic name (`.`-separated), as [`Catalog::owner_of`].
    pub fn owner_of_kafka_topic(&self, name: &str) -> Option<&AppId> {
        longest_prefix(
            &self.index.owners_dotted,
            self.index.max_owner_levels,
            name,
            '.',
        )
    }

    /// The products of an owner app.
    pub fn products_of<'a>(&'a self, app: &'a str) -> impl Iterator<Item = &'a DataProduct> + 'a {
        self.products.iter().filter(move |p| p.app == *app)
    }
}

impl Index {
    fn owner_of(&self, topic: &str) -> Option<&AppId> {
        longest_prefix(&self.owners, self.max_owner_levels, topic, '/')
    }
}

/// The value of the longest key that is `text` or a prefix of it ending at a `sep`.
fn longest_prefix<'a>(
    map: &'a HashMap<Box<str>, AppId, RandomState>,
    max_levels: usize,
    text: &str,
    sep: char,
) -> Option<&'a AppId> {
    if max_levels == 0 {
        return None;
    }
    // Start from the prefix of at most `max_levels` levels.
    let mut end = text.len();
    if let Some((i, _)) = text.match_indices(sep).nth(max_levels - 1) {
        end = i;
    }
    let mut prefix = &text[..end];
    loop {
        if let Some(app) = map.get(prefix) {
            return Some(app);
        }
        prefix = &prefix[..prefix.rfind(sep)?];
    }
}

/// Can one topic match both channels' patterns?
fn overlaps(a: &Channel, b: &Channel) -> bool {
    if a.levels() != b.levels() {
        return false;
    }
    let la: Vec<&str> = a.pattern.as_str().split('/').collect();
    let lb: Vec<&str> = b.pattern.as_str().split('/').collect();
    la.iter()
        .zip(&lb)
        .all(|(x, y)| *x == "*" || *y == "*" || x == y)
}
