//! In-memory storage that can "crash": every write not yet synced is lost.
//! The deterministic simulation and the acceptor tests run on it; the
//! RocksDB store must behave the same (its property test compares them).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::{SlotWrite, Storage, StoreError, StoreWrite};
use crate::consensus::acceptor::{TimelineState, Write};
use crate::id::Ttid;
use crate::lsn::Lsn;

#[derive(Debug, Clone, Default)]
struct TimelineData {
    state: Option<TimelineState>,
    /// start LSN → bytes of one append (or the surviving part of one).
    chunks: BTreeMap<Lsn, Bytes>,
    slots: BTreeMap<String, super::SlotRecord>,
}

#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    durable: HashMap<Ttid, TimelineData>,
    current: HashMap<Ttid, TimelineData>,
    /// Write calls since the last sync, in order: each is atomic (as a
    /// RocksDB write batch is), so a crash keeps a prefix of them.
    staged: Vec<(Ttid, Vec<StoreWrite>)>,
    syncs: u64,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget every unsynced write, as a power loss would.
    pub fn crash(&mut self) {
        self.crash_keeping(0);
    }

    /// A power loss that keeps the first `kept` unsynced write calls (the
    /// store writes them in order, and a crash may come between any two).
    pub fn crash_keeping(&mut self, kept: usize) {
        self.crash_keeping_only(|i| i < kept);
    }

    /// A power loss that keeps the unsynced write calls `kept` picks (by
    /// their index among them). Anything but a prefix is a disk that
    /// reorders, which none may do here: only the simulation's deliberate
    /// bug asks for it.
    pub fn crash_keeping_only(&mut self, kept: impl Fn(usize) -> bool) {
        self.persist_only(kept);
        self.current = self.durable.clone();
    }

    /// A sync that failed after the first `kept` unsynced write calls
    /// reached the disk: the rest never will (the kernel may drop the dirty
    /// pages a failed fsync leaves), though reads see them until a crash,
    /// and a later sync does not make them durable.
    pub fn fail_sync(&mut self, kept: usize) {
        self.persist_only(|i| i < kept);
    }

    fn persist_only(&mut self, kept: impl Fn(usize) -> bool) {
        let staged = std::mem::take(&mut self.staged);
        for (i, (ttid, writes)) in staged.into_iter().enumerate() {
            if kept(i) {
                let data = self.durable.entry(ttid).or_default();
                for w in &writes {
                    apply(data, w);
                }
            }
        }
    }

    /// Stage one write call.
    fn stage(&mut self, ttid: Ttid, writes: Vec<StoreWrite>) {
        if writes.is_empty() {
            return;
        }
        let data = self.current.entry(ttid).or_default();
        for w in &writes {
            apply(data, w);
        }
        self.staged.push((ttid, writes));
    }

    /// Number of write calls staged and not yet synced.
    pub fn unsynced(&self) -> usize {
        self.staged.len()
    }

    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The durable (synced) state of a timeline.
    pub fn durable_state(&self, ttid: Ttid) -> Option<&TimelineState> {
        self.durable.get(&ttid).and_then(|t| t.state.as_ref())
    }

    /// The chunk layout, for tiling checks: (start, len) in LSN order.
    pub fn chunk_layout(&self, ttid: Ttid) -> Vec<(Lsn, usize)> {
        self.current
            .get(&ttid)
            .map(|t| t.chunks.iter().map(|(l, b)| (*l, b.len())).collect())
            .unwrap_or_default()
    }
}

fn apply(data: &mut TimelineData, w: &StoreWrite) {
    let w = match w {
        StoreWrite::Acceptor(w) => w,
        StoreWrite::Slot(SlotWrite::Put(r)) => {
            data.slots.insert(r.name.clone(), (**r).clone());
            return;
        }
        StoreWrite::Slot(SlotWrite::Delete { name }) => {
            data.slots.remove(name);
            return;
        }
    };
    match w {
        Write::AppendWal { begin, bytes } => {
            data.chunks.insert(*begin, bytes.clone());
        }
        Write::TruncateWal { from } => {
            let tail: Vec<Lsn> = data.chunks.range(*from..).map(|(l, _)| *l).collect();
            for l in tail {
                data.chunks.remove(&l);
            }
            if let Some((&start, bytes)) = data.chunks.range(..*from).next_back() {
                let keep = from.0 - start.0;
                if (keep as usize) < bytes.len() {
                    let cut = bytes.slice(..keep as usize);
                    data.chunks.insert(start, cut);
                }
            }
        }
        Write::TrimWal { below } => {
            let head: Vec<Lsn> = data.chunks.range(..*below).map(|(l, _)| *l).collect();
            for l in head {
                let bytes = data.chunks.remove(&l).expect("key listed above");
                let end = l.0 + bytes.len() as u64;
                if end > below.0 {
                    let rest = bytes.slice((below.0 - l.0) as usize..);
                    data.chunks.insert(*below, rest);
                }
            }
        }
        Write::PutState(s) => data.state = Some((**s).clone()),
    }
}

impl Storage for MemStorage {
    fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
        let mut v: Vec<TimelineState> = self
            .current
            .values()
            .filter_map(|t| t.state.clone())
            .collect();
        v.sort_by_key(|s| s.ttid);
        Ok(v)
    }

    fn write(&mut self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError> {
        let call = writes.iter().cloned().map(StoreWrite::Acceptor).collect();
        self.stage(ttid, call);
        Ok(())
    }

    fn write_slot(&mut self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError> {
        self.stage(ttid, vec![StoreWrite::Slot(write.clone())]);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.persist_only(|_| true);
        self.syncs += 1;
        Ok(())
    }

    fn slots(&self) -> Result<Vec<(Ttid, super::SlotRecord)>, StoreError> {
        let mut v: Vec<_> = self
            .current
            .iter()
            .flat_map(|(t, d)| d.slots.values().map(|r| (*t, r.clone())))
            .collect();
        v.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        Ok(v)
    }

    fn read_wal(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<u8>, StoreError> {
        let data = self
            .current
            .get(&ttid)
            .ok_or(StoreError::UnknownTimeline(ttid))?;
        let (held_from, held_to) = data
            .state
            .as_ref()
            .map_or((Lsn(0), Lsn(0)), |s| (s.local_start_lsn, s.flush_lsn));
        let not_held = || StoreError::NotHeld {
            ttid,
            from,
            to,
            held_from,
            held_to,
        };
        if from > to || from < held_from || to > held_to {
            return Err(not_held());
        }
        let mut out = Vec::with_capacity((to.0 - from.0) as usize);
        let mut pos = from;
        let first = data
            .chunks
            .range(..=from)
            .next_back()
            .map(|(l, _)| *l)
            .unwrap_or(from);
        for (&start, bytes) in data.chunks.range(first..) {
            if pos >= to {
                break;
            }
            let end = Lsn(start.0 + bytes.len() as u64);
            if end <= pos {
                continue;
            }
            if start > pos {
                return Err(StoreError::CorruptWal {
                    ttid,
                    from: pos,
                    to: start,
                    detail: "gap between stored chunks".into(),
                });
            }
            let a = (pos.0 - start.0) as usize;
            let b = (to.min(end).0 - start.0) as usize;
            out.extend_from_slice(&bytes[a..b]);
            pos = Lsn(start.0 + b as u64);
        }
        if pos < to {
            return Err(not_held());
        }
        Ok(out)
    }
}

/// A greeting creating a timeline for unit tests: node 1 its only member,
/// starting at the second 16 MiB segment, default ids.
#[cfg(test)]
pub(crate) fn tests_greeting() -> crate::consensus::messages::Greeting {
    use crate::consensus::messages::{Greeting, ServerInfo};
    use crate::id::NodeId;
    Greeting {
        conf: None,
        protocol_version: crate::codec::PROTOCOL_VERSION,
        ttid: Ttid::default(),
        server: ServerInfo {
            system_id: 1,
            pg_version: 150000,
            wal_seg_size: 1 << 24,
            tli: 1,
        },
        timeline_start_lsn: Lsn(1 << 24),
        members: [(NodeId(1), "a:1".to_string())].into_iter().collect(),
        proposer_id: [0; 16],
        create: true,
        pg_ancestors: Vec::new(),
    }
}

/// The state [`tests_greeting`] creates.
#[cfg(test)]
pub(crate) fn tests_state() -> TimelineState {
    use crate::consensus::acceptor::Acceptor;
    Acceptor::create(crate::id::NodeId(1), &tests_greeting())
        .expect("a valid greeting")
        .0
        .state()
        .clone()
}
