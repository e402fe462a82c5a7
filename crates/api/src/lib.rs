//! The admin API of a meshgate node as types (corrosion's `corro-api-types` is the model): the
//! node serializes them, the CLI and the integration tests deserialize them, so the external
//! contract (DESIGN.md section 8) is checked by the compiler on both sides instead of by
//! `v["links"][0]["dialled"]`.
//!
//! Serde only: no IO, no node code. Fields the contract names keep their names exactly; every
//! type accepts fields it does not know (older CLIs read newer nodes).

mod backlog;
mod bridges;
mod catalog;
mod chargeback;
mod mesh;
mod node;
mod replay;

pub use backlog::{
    BacklogView, BridgeBacklog, GuaranteedView, QueueView, SessionBacklog, SessionsBacklog,
    StoreUse, StoreView,
};
pub use bridges::BridgeView;
pub use catalog::{
    CatalogView, ChannelView, ProducerView, ProductView, RefusedReload, ReloadOk, ReloadRefused,
    SubscriberView,
};
pub use chargeback::{ChargebackRow, ChargebackView, csv_field};
pub use mesh::{DialView, LinkState, LinkView, MeshDrops, MeshView, RegistryNodeView};
pub use node::{NodeInfo, PublishAnswer};
pub use replay::{ReplayReport, ReplayRequest};

use serde::{Deserialize, Serialize};

/// The body of every error answer: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
}
