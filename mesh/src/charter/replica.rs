//! One node's copy of an org charter: ingests ops from anywhere, keeps the valid ones, folds.

use std::collections::{BTreeMap, BTreeSet};

use callsign_keys::{Identity, IdentityKey};

use super::dag::OpDag;
use super::fold::{fold, Fold, Outcome};
use super::op::{Op, OpBody, OpHash};
use super::state::CharterState;

/// Bounds on what a replica holds for ops it cannot place yet.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaLimits {
    /// Ops waiting for a parent; further ops with unknown parents are rejected.
    pub max_pending: usize,
    /// Remembered rejected hashes (so they are not fetched again).
    pub max_rejected_memory: usize,
}

impl Default for ReplicaLimits {
    fn default() -> Self {
        Self {
            max_pending: 4096,
            max_rejected_memory: 65_536,
        }
    }
}

/// What one ingest call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Ops newly added to the DAG (in insertion order: parents first). Persist these.
    pub added: Vec<OpHash>,
    /// Ops refused, with the reason.
    pub rejected: Vec<(Option<OpHash>, String)>,
    /// Parents still missing for pending ops: fetch these.
    pub missing: Vec<OpHash>,
    /// Ops already known.
    pub duplicates: usize,
}

/// Why a local edit was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The fold refused it.
    #[error("edit rejected: {0}")]
    Rejected(String),
    /// The fold accepted it but it would change nothing.
    #[error("edit has no effect: {0}")]
    NoEffect(String),
}

/// Counters for monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Ops rejected (each also reported, with its reason, in an [`IngestReport`]).
    pub rejected: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
}

struct PendingOp {
    op: Op,
    encoded: Vec<u8>,
    missing: BTreeSet<OpHash>,
}

/// A node's replica of one org's charter.
pub struct Charter {
    org: IdentityKey,
    dag: OpDag,
    limits: ReplicaLimits,
    pending: BTreeMap<OpHash, PendingOp>,
    // parent → pending children waiting for it.
    waiting: BTreeMap<OpHash, Vec<OpHash>>,
    rejected: BTreeSet<OpHash>,
    fold: Fold,
    stats: ReplicaStats,
}

impl Charter {
    /// An empty replica of `org`'s charter, to be filled by sync or from the log.
    pub fn new(org: IdentityKey) -> Self {
        Self::with_limits(org, ReplicaLimits::default())
    }

    /// An empty replica with explicit limits.
    pub fn with_limits(org: IdentityKey, limits: ReplicaLimits) -> Self {
        let dag = OpDag::default();
        Self {
            org,
            fold: fold(org, &dag.topological_order()),
            dag,
            limits,
            pending: BTreeMap::new(),
            waiting: BTreeMap::new(),
            rejected: BTreeSet::new(),
            stats: ReplicaStats::default(),
        }
    }

    /// Founds a new org: `root`'s key names it.
    pub fn create(root: &Identity, name: &str, now_ms: u64) -> Result<(Self, Op), EditError> {
        let mut charter = Self::new(root.public());
        let op = charter.edit(root, OpBody::CreateOrg { name: name.into() }, now_ms)?;
        Ok((charter, op))
    }

    /// The org.
    pub fn org(&self) -> IdentityKey {
        self.org
    }

    /// The folded state.
    pub fn state(&self) -> &CharterState {
        &self.fold.state
    }

    /// What the fold made of an op.
    pub fn outcome(&self, hash: &OpHash) -> Option<&Outcome> {
        self.fold.outcomes.get(hash)
    }

    /// The DAG (for sync and persistence).
    pub fn dag(&self) -> &OpDag {
        &self.dag
    }

    /// Heads of the DAG, sorted.
    pub fn heads(&self) -> Vec<OpHash> {
        self.dag.heads()
    }

    /// Number of ops held.
    pub fn len(&self) -> usize {
        self.dag.len()
    }

    /// Whether no ops are held.
    pub fn is_empty(&self) -> bool {
        self.dag.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// Ops waiting for parents.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether the op is known: held, pending, or rejected.
    pub fn knows(&self, hash: &OpHash) -> bool {
        self.dag.contains(hash) || self.pending.contains_key(hash) || self.rejected.contains(hash)
    }

    /// Signs an edit by `author` on top of the current heads and applies it. Fails, changing
    /// nothing, if the fold would reject or skip it.
    pub fn edit(&mut self, author: &Identity, body: OpBody, now_ms: u64) -> Result<Op, EditError> {
        let op = Op::sign(author, self.org, self.heads(), now_ms, body);
        let hash = op.hash();
        let report = self.ingest_ops(vec![op.clone()]);
        if let Some((_, reason)) = report.rejected.first() {
            return Err(EditError::Rejected(reason.clone()));
        }
        match self.fold.outcomes.get(&hash) {
            Some(Outcome::Applied) => Ok(op),
            Some(Outcome::Skipped(reason)) => {
                let reason = reason.clone();
                self.dag.remove_with_descendants(&[hash]);
                self.refold();
                Err(EditError::NoEffect(reason))
            }
            _ => Err(EditError::Rejected("edit was not applied".into())),
        }
    }

    /// Ingests ops in wire form (from a peer or the log).
    pub fn ingest(&mut self, encoded: Vec<Vec<u8>>) -> IngestReport {
        let mut report = IngestReport::default();
        let mut ops = Vec::with_capacity(encoded.len());
        for bytes in encoded {
            match Op::decode(&bytes) {
                Ok(op) => ops.push((op, bytes)),
                Err(e) => self.note_rejection(&mut report, None, e.to_string()),
            }
        }
        self.ingest_decoded(ops, report)
    }

    /// Ingests already-decoded ops (their signatures are checked again).
    pub fn ingest_ops(&mut self, ops: Vec<Op>) -> IngestReport {
        let mut report = IngestReport::default();
        let mut decoded = Vec::with_capacity(ops.len());
        for op in ops {
            match op.verify() {
                Ok(()) => {
                    let encoded = op.encode();
                    decoded.push((op, encoded));
                }
                Err(e) => self.note_rejection(&mut report, Some(op.hash()), e.to_string()),
            }
        }
        self.ingest_decoded(decoded, report)
    }

    fn ingest_decoded(&mut self, ops: Vec<(Op, Vec<u8>)>, mut report: IngestReport) -> IngestReport {
        for (op, encoded) in ops {
            let hash = op.hash();
            if self.knows(&hash) {
                report.duplicates += 1;
                self.stats.duplicates += 1;
                continue;
            }
            if op.org != self.org {
                self.note_rejection(&mut report, Some(hash), "op belongs to another org".into());
                continue;
            }
            if let Some(p) = op.parents.iter().find(|p| self.rejected.contains(p)) {
                self.note_rejection(&mut report, Some(hash), format!("parent {p:?} was rejected"));
                continue;
            }
            let missing: BTreeSet<OpHash> = self.dag.missing_parents(&op).into_iter().collect();
            if missing.is_empty() {
                self.insert_and_release(op, hash, encoded, &mut report);
            } else if self.pending.len() >= self.limits.max_pending {
                // Not remembered as rejected: the op may be valid and must be accepted when it
                // comes again with its history.
                let reason = format!(
                    "unknown parent and the pending set is full ({} ops)",
                    self.limits.max_pending
                );
                tracing::debug!(?hash, %reason, "charter op refused");
                self.stats.rejected += 1;
                report.rejected.push((Some(hash), reason));
            } else {
                for p in &missing {
                    self.waiting.entry(*p).or_default().push(hash);
                }
                self.pending.insert(
                    hash,
                    PendingOp {
                        op,
                        encoded,
                        missing,
                    },
                );
            }
        }
        if !report.added.is_empty() {
            self.refold();
            // Rejection is decided by each op's causal past, which is complete now. Only ops new
            // in this call are removed: older ones were valid when their own causal past was.
            let new: BTreeSet<OpHash> = report.added.iter().copied().collect();
            let doomed: Vec<(OpHash, String)> = self
                .fold
                .outcomes
                .iter()
                .filter(|(h, _)| new.contains(h))
                .filter_map(|(h, o)| match o {
                    Outcome::Rejected(reason) => Some((*h, reason.clone())),
                    _ => None,
                })
                .collect();
            if !doomed.is_empty() {
                let roots: Vec<OpHash> = doomed.iter().map(|(h, _)| *h).collect();
                let removed = self.dag.remove_with_descendants(&roots);
                for (hash, reason) in doomed {
                    self.note_rejection(&mut report, Some(hash), reason);
                }
                for hash in &removed {
                    if !roots.contains(hash) {
                        self.note_rejection(&mut report, Some(*hash), "descends from a rejected op".into());
                    }
                }
                report.added.retain(|h| !removed.contains(h));
                self.refold();
            }
        }
        report.missing = self
            .waiting
            .keys()
            .filter(|p| !self.pending.contains_key(p))
            .copied()
            .collect();
        report
    }

    fn insert_and_release(&mut self, op: Op, hash: OpHash, encoded: Vec<u8>, report: &mut IngestReport) {
        let mut ready = vec![(op, hash, encoded)];
        while let Some((op, hash, encoded)) = ready.pop() {
            if self.dag.insert(op, hash, encoded) {
                report.added.push(hash);
            }
            for child in self.waiting.remove(&hash).unwrap_or_default() {
                if let Some(p) = self.pending.get_mut(&child) {
                    p.missing.remove(&hash);
                    if p.missing.is_empty() {
                        let p = self.pending.remove(&child).expect("present");
                        ready.push((p.op, child, p.encoded));
                    }
                }
            }
        }
    }

    fn note_rejection(&mut self, report: &mut IngestReport, hash: Option<OpHash>, reason: String) {
        tracing::debug!(?hash, %reason, "charter op rejected");
        if let Some(h) = hash {
            if self.rejected.len() >= self.limits.max_rejected_memory {
                self.rejected.clear();
            }
            self.rejected.insert(h);
        }
        self.stats.rejected += 1;
        report.rejected.push((hash, reason));
    }

    fn refold(&mut self) {
        self.fold = fold(self.org, &self.dag.topological_order());
    }
}
