//! One node's copy of an org charter: ingests ops from anywhere, keeps the valid ones, folds.

use std::collections::{BTreeMap, BTreeSet};

use callsign_keys::{Identity, IdentityKey};

use super::dag::{DagOp, OpDag};
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

#[derive(Clone)]
struct PendingOp {
    op: Op,
    encoded: Vec<u8>,
    missing: BTreeSet<OpHash>,
}

/// A node's replica of one org's charter.
#[derive(Clone)]
pub struct Charter {
    org: IdentityKey,
    dag: OpDag,
    limits: ReplicaLimits,
    pending: BTreeMap<OpHash, PendingOp>,
    // parent → pending children waiting for it.
    waiting: BTreeMap<OpHash, Vec<OpHash>>,
    rejected: BTreeSet<OpHash>,
    // Peers named as admin or member by some held or pending op (see `author_is_known`).
    named: BTreeSet<IdentityKey>,
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
            named: BTreeSet::new(),
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

    /// The ops that removed a member `is_removed` accepts (applied or not: a later admission
    /// may have undone one).
    pub fn removals(&self, is_removed: impl Fn(&IdentityKey) -> bool) -> Vec<&DagOp> {
        self.dag
            .iter()
            .filter(|o| matches!(&o.op.body, OpBody::RemoveMember { peer } if is_removed(peer)))
            .collect()
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
        let error = match self.fold.outcomes.get(&hash) {
            Some(Outcome::Applied) => return Ok(op),
            Some(Outcome::Skipped(reason)) => EditError::NoEffect(reason.clone()),
            Some(Outcome::Rejected(reason)) => EditError::Rejected(reason.clone()),
            None => EditError::Rejected(
                report
                    .rejected
                    .first()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| "edit was not applied".into()),
            ),
        };
        // Nobody else has seen it: take it back so it never reaches a peer.
        if self.dag.contains(&hash) {
            self.dag.remove_with_descendants(&[hash]);
            self.refold();
        }
        Err(error)
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

    fn ingest_decoded(
        &mut self,
        ops: Vec<(Op, Vec<u8>)>,
        mut report: IngestReport,
    ) -> IngestReport {
        for (op, encoded) in ops {
            // The wire form is at hand: hash it rather than re-encoding the op.
            let hash = OpHash::of_encoded(&encoded);
            if self.knows(&hash) {
                report.duplicates += 1;
                self.stats.duplicates += 1;
                continue;
            }
            if op.org != self.org {
                self.note_rejection(&mut report, Some(hash), "op belongs to another org".into());
                continue;
            }
            if !self.author_is_known(&op) {
                // Not remembered: the op naming the author may simply not have arrived yet.
                self.stats.rejected += 1;
                report.rejected.push((
                    Some(hash),
                    "author is not named by any op of the org".into(),
                ));
                continue;
            }
            let missing: BTreeSet<OpHash> = self.dag.missing_parents(&op).into_iter().collect();
            if missing.is_empty() {
                self.note_named(&op);
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
                self.note_named(&op);
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
            // Ops the fold rejects stay in the DAG without effect: whether an op is valid can
            // change when a concurrent revocation arrives, so dropping it here but keeping it
            // elsewhere would leave replicas with different op sets. Keeping every signed op
            // of a known author is what makes the sets, and so the states, converge.
            for hash in &report.added {
                if let Some(Outcome::Rejected(reason)) = self.fold.outcomes.get(hash) {
                    tracing::debug!(?hash, %reason, "charter op has no effect");
                    self.stats.rejected += 1;
                    report.rejected.push((Some(*hash), reason.clone()));
                }
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

    /// Whether the op set names the author as admin or member (or it is the root). This only
    /// keeps strangers from filling the DAG; authority itself is the fold's business.
    fn author_is_known(&self, op: &Op) -> bool {
        op.author == self.org || self.named.contains(&op.author)
    }

    fn note_named(&mut self, op: &Op) {
        if let OpBody::GrantAdmin { peer } | OpBody::PutMember { peer, .. } = &op.body {
            self.named.insert(*peer);
        }
    }

    fn insert_and_release(
        &mut self,
        op: Op,
        hash: OpHash,
        encoded: Vec<u8>,
        report: &mut IngestReport,
    ) {
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

    /// Recomputes the state from the DAG: the fold that runs after every ingest. Public for
    /// benchmarks and diagnostics.
    pub fn refold(&mut self) {
        self.fold = fold(self.org, &self.dag.topological_order());
    }
}
