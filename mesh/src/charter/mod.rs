//! The org charter: a signed op-DAG folded into channels, roles, members and ACLs, replicated by
//! anti-entropy and persisted as an append-only log.

pub mod bundle;
mod dag;
mod fold;
mod links;
pub mod log;
pub mod model;
mod op;
mod replica;
mod state;
pub mod sync;
pub mod templates;

pub use dag::{DagOp, OpDag};
pub use fold::{Fold, Outcome};
pub use model::{
    ChannelId, ChannelPolicy, FloorMode, Member, Permissions, Preset, PresetChannel, Priority,
    RecordingPolicy, RelayInfo, Role,
};
pub use op::{Op, OpBody, OpDecodeError, OpHash, MAX_OP_BYTES, OP_VERSION};
pub use replica::{Charter, EditError, IngestReport, ReplicaLimits, ReplicaStats};
pub use state::{Channel, CharterState};
pub use sync::{CharterSync, SyncConfig, SyncEvent, SyncMessage};
