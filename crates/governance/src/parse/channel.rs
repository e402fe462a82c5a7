//! One channel of a spec, read step by step: names and the mesh pattern, operations, tags and
//! grants, access, messages, parameters, and the `x-` extensions.

use meshgate_topic::{Filter, validate_topic};
use serde_json::{Map, Value};

use super::parts::split_address;
use super::{Cx, Node, child, text};
use crate::app::AppId;
use crate::date::Date;
use crate::model::{
    Access, Channel, ChannelId, ChannelKind, Dialect, Message, ParamSource, Parameter,
};

/// A channel's names, derived from its address.
struct Names {
    /// The address as written (AsyncAPI 3 `address`, else the channel key).
    address: String,
    /// The address without its parameters, `.`-separated.
    name: String,
    /// The parameters of the address, in order.
    params: Vec<String>,
    kafka_topic: String,
    mesh_base: String,
    pattern: Filter,
}

/// An operation on a channel: whether the owner sends through it, its node and pointer.
struct Operation {
    owner_sends: bool,
    value: Value,
    ptr: String,
}

impl Cx<'_> {
    /// Reads one channel; `None` (with the problems recorded) when it cannot be used.
    pub(super) fn channel(
        &mut self,
        app: &AppId,
        dialect: Dialect,
        key: &str,
        node: Node<'_>,
    ) -> Option<Channel> {
        let (ch, ch_ptr) = self.resolve(node.value, node.ptr)?;
        let Some(map) = ch.as_object() else {
            self.problem(node.ptr, format!("channel {key:?} must be a mapping"));
            return None;
        };
        let names = self.names(app, dialect, key, map, node.ptr)?;
        let ops = self.operations(dialect, key, map, &ch_ptr);
        let (owner_sends, owner_receives) = if ops.is_empty() {
            (true, false)
        } else {
            (
                ops.iter().any(|o| o.owner_sends),
                ops.iter().any(|o| !o.owner_sends),
            )
        };
        let (tags, grants) = self.tags(map, &ch_ptr, &ops);
        let (access, grants) = self.access(&names, grants, node.ptr);
        let messages = self.messages(dialect, map, &ch_ptr, &ops);
        let parameters = self.parameters(map, &ch_ptr, &names);
        let producers = self.producers(map, &ch_ptr);
        let eol = self.deprecation(map, &ch_ptr);
        let kind = self.kind(map, &ch_ptr);
        let kafka = self.kafka(
            map.get("bindings").and_then(|b| b.get("kafka")),
            &ch_ptr,
            &names.kafka_topic,
        );
        Some(Channel {
            id: ChannelId(0),
            owner: app.clone(),
            name: names.name,
            address: names.address,
            kafka_topic: names.kafka_topic,
            mesh_base: names.mesh_base,
            pattern: names.pattern,
            parameters,
            access,
            grants,
            producers,
            eol,
            kind,
            owner_sends,
            owner_receives,
            kafka,
            messages,
            tags,
            file: self.file.to_string(),
            line: self.doc.line(node.ptr),
        })
    }

    /// The address, its parameters, the Kafka topic and the mesh pattern of a channel.
    fn names(
        &mut self,
        app: &AppId,
        dialect: Dialect,
        key: &str,
        map: &Map<String, Value>,
        ptr: &str,
    ) -> Option<Names> {
        let address = match (dialect, map.get("address")) {
            (Dialect::AsyncApi3, Some(Value::String(a))) => a.clone(),
            _ => key.to_string(),
        };
        let (name, params) = match split_address(&address) {
            Ok(parts) => parts,
            Err(e) => {
                self.problem(ptr, format!("channel {address:?}: {e}"));
                return None;
            }
        };
        let kafka_topic = format!("{app}.{name}");
        let mesh_base = format!("{}/{}", app.mesh_prefix(), name.replace('.', "/"));
        let mut pattern_text = mesh_base.clone();
        let mut example = mesh_base.clone();
        for _ in &params {
            pattern_text.push_str("/*");
            example.push_str("/x");
        }
        let pattern = match validate_topic(&example).and_then(|()| Filter::parse(&pattern_text)) {
            Ok(p) => p,
            Err(e) => {
                self.problem(
                    ptr,
                    format!("channel {address:?} does not make a valid mesh topic: {e}"),
                );
                return None;
            }
        };
        if kafka_topic.len() > 249 {
            self.problem(
                ptr,
                format!("Kafka topic {kafka_topic:?} is longer than 249 bytes"),
            );
            return None;
        }
        Some(Names {
            address,
            name,
            params,
            kafka_topic,
            mesh_base,
            pattern,
        })
    }

    /// The operations on a channel: under the channel (2.x; SpecMesh reads `publish` as the
    /// owner sending, AsyncAPI 2.6 the other way round), or top-level operations referring to
    /// it (3.x).
    fn operations(
        &mut self,
        dialect: Dialect,
        key: &str,
        map: &Map<String, Value>,
        ch_ptr: &str,
    ) -> Vec<Operation> {
        let mut ops = Vec::new();
        match dialect {
            Dialect::SpecMesh | Dialect::AsyncApi2 => {
                for (op, owner_sends_if_specmesh) in [("publish", true), ("subscribe", false)] {
                    let Some(v) = map.get(op) else { continue };
                    let owner_sends = match dialect {
                        Dialect::SpecMesh => owner_sends_if_specmesh,
                        _ => !owner_sends_if_specmesh,
                    };
                    if let Some((value, ptr)) = self.resolve(v, &child(ch_ptr, op)) {
                        ops.push(Operation {
                            owner_sends,
                            value,
                            ptr,
                        });
                    }
                }
            }
            Dialect::AsyncApi3 => {
                let target = child("#/channels", key);
                let Some(Value::Object(all)) = self.doc.root.get("operations") else {
                    return ops;
                };
                for (op_key, op) in all {
                    let ptr = child("/operations", op_key);
                    let Some((value, ptr)) = self.resolve(op, &ptr) else {
                        continue;
                    };
                    let refers = value
                        .get("channel")
                        .and_then(|c| c.get("$ref"))
                        .and_then(Value::as_str)
                        == Some(target.as_str());
                    if !refers {
                        continue;
                    }
                    let owner_sends = match value.get("action").and_then(Value::as_str) {
                        Some("send") => true,
                        Some("receive") => false,
                        _ => {
                            self.problem(&ptr, "operation `action` must be `send` or `receive`");
                            continue;
                        }
                    };
                    ops.push(Operation {
                        owner_sends,
                        value,
                        ptr,
                    });
                }
            }
        }
        ops
    }

    /// The tags of a channel and its operations, and the apps its `grant-access:` tags name.
    fn tags(
        &mut self,
        map: &Map<String, Value>,
        ch_ptr: &str,
        ops: &[Operation],
    ) -> (Vec<String>, Vec<AppId>) {
        let mut tags = Vec::new();
        let mut grants: Vec<AppId> = Vec::new();
        let mut sources: Vec<(&Value, String)> = Vec::new();
        if let Some(t) = map.get("tags") {
            sources.push((t, child(ch_ptr, "tags")));
        }
        for op in ops {
            if let Some(t) = op.value.get("tags") {
                sources.push((t, child(&op.ptr, "tags")));
            }
        }
        for (list, ptr) in sources {
            let Some(list) = list.as_array() else {
                self.problem(&ptr, "`tags` must be a list");
                continue;
            };
            for (i, tag) in list.iter().enumerate() {
                let tag_ptr = child(&ptr, &i.to_string());
                let name = tag
                    .get("name")
                    .and_then(Value::as_str)
                    .or_else(|| tag.as_str());
                let Some(name) = name else {
                    self.problem(&tag_ptr, "a tag needs a `name`");
                    continue;
                };
                if let Some(grantee) = name.strip_prefix("grant-access:") {
                    match AppId::parse(grantee) {
                        Ok(g) if !grants.contains(&g) => grants.push(g),
                        Ok(_) => {}
                        Err(e) => {
                            self.problem(&tag_ptr, format!("grant to a malformed app id: {e}"))
                        }
                    }
                }
                tags.push(name.to_string());
            }
        }
        (tags, grants)
    }

    /// The access level from the name's first segment (no marker: protected when something is
    /// granted, else private), and the grants that count (only a protected channel's).
    fn access(&mut self, names: &Names, mut grants: Vec<AppId>, ptr: &str) -> (Access, Vec<AppId>) {
        let marker = names.name.split('.').next().unwrap_or_default();
        let access = match marker {
            "_public" => Access::Public,
            "_protected" => Access::Protected,
            "_private" => Access::Private,
            _ if grants.is_empty() => Access::Private,
            _ => Access::Protected,
        };
        if !grants.is_empty() && access != Access::Protected {
            self.problem(
                ptr,
                format!(
                    "channel {:?} is {}: its grants have no effect",
                    names.address,
                    access.as_str()
                ),
            );
        }
        if access != Access::Protected {
            grants.clear();
        }
        (access, grants)
    }

    /// The messages of a channel (`oneOf` expanded), each with its payload schema.
    fn messages(
        &mut self,
        dialect: Dialect,
        map: &Map<String, Value>,
        ch_ptr: &str,
        ops: &[Operation],
    ) -> Vec<Message> {
        let mut nodes: Vec<(Value, String)> = Vec::new();
        match dialect {
            Dialect::SpecMesh | Dialect::AsyncApi2 => {
                for op in ops {
                    if let Some(m) = op.value.get("message") {
                        nodes.push((m.clone(), child(&op.ptr, "message")));
                    }
                }
            }
            Dialect::AsyncApi3 => {
                if let Some(Value::Object(all)) = map.get("messages") {
                    let base = child(ch_ptr, "messages");
                    for (k, m) in all {
                        nodes.push((m.clone(), child(&base, k)));
                    }
                }
            }
        }
        let mut expanded = Vec::new();
        for (m, ptr) in nodes {
            let Some((m, ptr)) = self.resolve(&m, &ptr) else {
                continue;
            };
            match m.get("oneOf").and_then(Value::as_array) {
                Some(list) => {
                    for (i, item) in list.iter().enumerate() {
                        let item_ptr = child(&child(&ptr, "oneOf"), &i.to_string());
                        if let Some(r) = self.resolve(item, &item_ptr) {
                            expanded.push(r);
                        }
                    }
                }
                None => expanded.push((m, ptr)),
            }
        }
        expanded
            .into_iter()
            .map(|(m, ptr)| {
                let schema = m.get("payload").and_then(|payload| {
                    let hint = m.get("schemaFormat").and_then(Value::as_str);
                    self.schema(payload, &child(&ptr, "payload"), hint)
                });
                Message {
                    name: m.get("name").and_then(text),
                    schema,
                }
            })
            .collect()
    }

    /// The parameters of the address, each with where its value comes from; declared
    /// parameters the address does not use are reported.
    fn parameters(
        &mut self,
        map: &Map<String, Value>,
        ch_ptr: &str,
        names: &Names,
    ) -> Vec<Parameter> {
        let params_ptr = child(ch_ptr, "parameters");
        let declared = match map.get("parameters") {
            Some(Value::Object(p)) => p.clone(),
            Some(_) => {
                self.problem(&params_ptr, "`parameters` must be a mapping");
                Map::new()
            }
            None => Map::new(),
        };
        for k in declared.keys() {
            if !names.params.iter().any(|n| n == k) {
                self.problem(
                    &child(&params_ptr, k),
                    format!(
                        "parameter {k:?} is not used in the address {:?}",
                        names.address
                    ),
                );
            }
        }
        let mut parameters = Vec::new();
        for pname in &names.params {
            let ptr = child(&params_ptr, pname);
            let decl = match declared.get(pname) {
                Some(d) => self.resolve(d, &ptr).map(|r| r.0),
                None => None,
            };
            let source = decl
                .as_ref()
                .map(|d| self.param_source(d, &ptr))
                .unwrap_or(ParamSource::Unspecified);
            parameters.push(Parameter {
                name: pname.clone(),
                source,
                description: decl
                    .as_ref()
                    .and_then(|d| d.get("description"))
                    .and_then(text),
            });
        }
        parameters
    }

    /// `x-producers`: apps besides the owner that may write the channel.
    fn producers(&mut self, map: &Map<String, Value>, ch_ptr: &str) -> Vec<AppId> {
        let mut producers = Vec::new();
        let Some(list) = map.get("x-producers") else {
            return producers;
        };
        let ptr = child(ch_ptr, "x-producers");
        let Some(list) = list.as_array() else {
            self.problem(&ptr, "`x-producers` must be a list of app ids");
            return producers;
        };
        for (i, p) in list.iter().enumerate() {
            match p.as_str().map(AppId::parse) {
                Some(Ok(a)) => producers.push(a),
                Some(Err(e)) => self.problem(&child(&ptr, &i.to_string()), e.to_string()),
                None => self.problem(&child(&ptr, &i.to_string()), "a producer must be an app id"),
            }
        }
        producers
    }

    /// `x-deprecated`: the end of life of a deprecated channel.
    fn deprecation(&mut self, map: &Map<String, Value>, ch_ptr: &str) -> Option<Date> {
        let d = match map.get("x-deprecated") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => return None,
            Some(d) => d,
        };
        let ptr = child(ch_ptr, "x-deprecated");
        let Some(v) = d.get("eol") else {
            self.problem(&ptr, "`x-deprecated` needs an `eol: YYYY-MM-DD` date");
            return None;
        };
        match v.as_str().map(Date::parse) {
            Some(Ok(date)) => Some(date),
            _ => {
                self.problem(
                    &child(&ptr, "eol"),
                    format!("invalid EOL date {v}: expected YYYY-MM-DD"),
                );
                None
            }
        }
    }

    /// `x-type`: event (the default), data, command or internal.
    fn kind(&mut self, map: &Map<String, Value>, ch_ptr: &str) -> ChannelKind {
        let Some(v) = map.get("x-type") else {
            return ChannelKind::Event;
        };
        match v.as_str() {
            Some("event") => ChannelKind::Event,
            Some("data") => ChannelKind::Data,
            Some("command") => ChannelKind::Command,
            Some("internal") => ChannelKind::Internal,
            _ => {
                self.problem(
                    &child(ch_ptr, "x-type"),
                    format!("invalid x-type {v}: expected event, data, command or internal"),
                );
                ChannelKind::Event
            }
        }
    }
}
