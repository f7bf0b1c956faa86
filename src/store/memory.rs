//! In-memory storage that can "crash": every write not yet synced is lost.
//! The deterministic simulation and the acceptor tests run on it; the
//! RocksDB store must behave the same (its property test compares them).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::{Storage, StoreError};
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
    /// Writes since the last sync, in order.
    staged: Vec<(Ttid, Write)>,
    syncs: u64,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget every unsynced write, as a power loss would.
    pub fn crash(&mut self) {
        self.current = self.durable.clone();
        self.staged.clear();
    }

    /// Number of writes staged and not yet synced.
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

fn apply(data: &mut TimelineData, w: &Write) {
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
        Write::PutSlot(r) => {
            data.slots.insert(r.name.clone(), (**r).clone());
        }
        Write::DeleteSlot { name } => {
            data.slots.remove(name);
        }
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
        let data = self.current.entry(ttid).or_default();
        for w in writes {
            apply(data, w);
            self.staged.push((ttid, w.clone()));
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        for (ttid, w) in self.staged.drain(..) {
            apply(self.durable.entry(ttid).or_default(), &w);
        }
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
