//! The op DAG: ops by hash with parent/child links, heads, a deterministic topological order,
//! and an exact ancestry index over that order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use super::op::{Op, OpHash};

/// An op held in the DAG.
#[derive(Clone, Debug)]
pub struct DagOp {
    /// The op.
    pub op: Op,
    /// Its hash.
    pub hash: OpHash,
    /// Its wire form, kept for sync and persistence.
    pub encoded: Vec<u8>,
    parents: Vec<u32>,
    children: Vec<u32>,
}

/// A set of ops closed under parents: every op's parents are in the DAG.
#[derive(Clone, Debug, Default)]
pub struct OpDag {
    ops: Vec<DagOp>,
    // Lookup only, never iterated: order cannot leak into decisions.
    index: HashMap<OpHash, u32>,
    heads: BTreeSet<OpHash>,
}

impl OpDag {
    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether the op is present.
    pub fn contains(&self, hash: &OpHash) -> bool {
        self.index.contains_key(hash)
    }

    /// Looks an op up.
    pub fn get(&self, hash: &OpHash) -> Option<&DagOp> {
        self.index.get(hash).map(|&i| &self.ops[i as usize])
    }

    /// Ops with no children, sorted.
    pub fn heads(&self) -> Vec<OpHash> {
        self.heads.iter().copied().collect()
    }

    /// Parents not (yet) in the DAG.
    pub fn missing_parents(&self, op: &Op) -> Vec<OpHash> {
        op.parents
            .iter()
            .filter(|p| !self.index.contains_key(p))
            .copied()
            .collect()
    }

    /// Adds an op whose parents are all present. Returns false if it was already there.
    pub fn insert(&mut self, op: Op, hash: OpHash, encoded: Vec<u8>) -> bool {
        if self.index.contains_key(&hash) {
            return false;
        }
        let idx = self.ops.len() as u32;
        let parents: Vec<u32> = op
            .parents
            .iter()
            .map(|p| {
                self.heads.remove(p);
                self.index[p]
            })
            .collect();
        for &p in &parents {
            self.ops[p as usize].children.push(idx);
        }
        self.heads.insert(hash);
        self.index.insert(hash, idx);
        self.ops.push(DagOp {
            op,
            hash,
            encoded,
            parents,
            children: Vec::new(),
        });
        true
    }

    /// Removes the given ops and all their descendants; returns the hashes removed.
    pub fn remove_with_descendants(&mut self, roots: &[OpHash]) -> Vec<OpHash> {
        let doomed = self.closure(roots, |o| &o.children);
        let old = std::mem::take(&mut self.ops);
        let mut removed = Vec::new();
        *self = Self::default();
        for (i, dag_op) in old.into_iter().enumerate() {
            if doomed[i] {
                removed.push(dag_op.hash);
            } else {
                // Kept ops' parents are kept too (removal is closed under descendants), and the
                // old order was parents-first, so re-inserting in order always succeeds.
                self.insert(dag_op.op, dag_op.hash, dag_op.encoded);
            }
        }
        removed
    }

    /// All ops in a deterministic topological order: Kahn's algorithm, always taking the ready
    /// op with the smallest hash. The same op set gives the same order on every node.
    pub fn topological_order(&self) -> Vec<&DagOp> {
        let mut indegree: Vec<u32> = self.ops.iter().map(|o| o.parents.len() as u32).collect();
        let mut ready: BinaryHeap<Reverse<(OpHash, u32)>> = self
            .ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.parents.is_empty())
            .map(|(i, o)| Reverse((o.hash, i as u32)))
            .collect();
        let mut order = Vec::with_capacity(self.ops.len());
        while let Some(Reverse((_, i))) = ready.pop() {
            let dag_op = &self.ops[i as usize];
            order.push(dag_op);
            for &c in &dag_op.children {
                indegree[c as usize] -= 1;
                if indegree[c as usize] == 0 {
                    ready.push(Reverse((self.ops[c as usize].hash, c)));
                }
            }
        }
        order
    }

    /// Every op in the causal past of `from` (inclusive), as a membership vector by insertion
    /// index; used by sync to compute differences.
    pub fn ancestry(&self, from: &[OpHash]) -> Vec<bool> {
        self.closure(from, |o| &o.parents)
    }

    /// The ops reachable from `from` (inclusive) along `edges`, by insertion index.
    fn closure(&self, from: &[OpHash], edges: impl Fn(&DagOp) -> &Vec<u32>) -> Vec<bool> {
        let mut seen = vec![false; self.ops.len()];
        let mut stack: Vec<u32> = from
            .iter()
            .filter_map(|h| self.index.get(h).copied())
            .collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i as usize], true) {
                stack.extend(edges(&self.ops[i as usize]).iter().copied());
            }
        }
        seen
    }

    /// Ops in insertion order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = &DagOp> {
        self.ops.iter()
    }

    /// Ops that are ancestors-or-self of `want` but not of `have`, parents first.
    pub fn difference(&self, want: &[OpHash], have: &[OpHash]) -> Vec<&DagOp> {
        let wanted = self.ancestry(want);
        let known = self.ancestry(have);
        self.ops
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted[*i] && !known[*i])
            .map(|(_, o)| o)
            .collect()
    }
}

/// Exact "is an ancestor of" over a topological order, in O(1) per query.
///
/// The order is split into chains (each op continues a parent's chain when that parent has no
/// continuation yet); each op records, per chain, the furthest position it can reach. `a` is an
/// ancestor-or-self of `b` iff `b` reaches `a`'s position on `a`'s chain. Memory is ops × chains,
/// and chains stay few because they only fork where the history does.
pub struct Ancestry {
    chain: Vec<u32>,
    pos: Vec<u32>,
    reach: Vec<Vec<u32>>,
}

impl Ancestry {
    /// Builds the index for ops given in topological order, each with its parents' positions.
    pub fn build(parents_by_pos: &[Vec<u32>]) -> Self {
        let n = parents_by_pos.len();
        let mut chain = vec![0u32; n];
        let mut pos = vec![0u32; n];
        let mut reach: Vec<Vec<u32>> = Vec::with_capacity(n);
        // chain_tail[c] = position of the last op on chain c.
        let mut chain_tail: Vec<u32> = Vec::new();
        for (i, parents) in parents_by_pos.iter().enumerate() {
            let continued = parents
                .iter()
                .filter(|&&p| chain_tail[chain[p as usize] as usize] == p)
                .map(|&p| chain[p as usize])
                .min();
            let c = match continued {
                Some(c) => c,
                None => {
                    chain_tail.push(0);
                    (chain_tail.len() - 1) as u32
                }
            };
            let mut r: Vec<u32> = Vec::new();
            for &p in parents {
                let pr = &reach[p as usize];
                if r.len() < pr.len() {
                    r.resize(pr.len(), 0);
                }
                for (a, b) in r.iter_mut().zip(pr) {
                    *a = (*a).max(*b);
                }
            }
            if r.len() <= c as usize {
                r.resize(c as usize + 1, 0);
            }
            // Positions are 1-based so 0 means "nothing on this chain".
            let p = r[c as usize] + 1;
            r[c as usize] = p;
            chain[i] = c;
            pos[i] = p;
            chain_tail[c as usize] = i as u32;
            reach.push(r);
        }
        Self { chain, pos, reach }
    }

    /// Whether the op at topological position `a` is an ancestor of (or is) the one at `b`.
    pub fn is_ancestor(&self, a: u32, b: u32) -> bool {
        let c = self.chain[a as usize] as usize;
        self.reach[b as usize].get(c).copied().unwrap_or(0) >= self.pos[a as usize]
    }
}
