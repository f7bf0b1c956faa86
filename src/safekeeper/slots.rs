//! Physical replication slots on this safekeeper (ARCHITECTURE.md,
//! "3.10 Slots and retention horizons").
//!
//! A slot remembers where its consumer stands so WAL from there on is kept.
//! Durable slots are stored in the `slot` column family through the
//! group-commit writer; temporary ones live in memory and go with the session
//! that made them. A consumer's flush reports move a slot in memory at once;
//! the retention task writes moved slots out about once a second (as
//! PostgreSQL saves physical slots at checkpoints rather than per report), and
//! only the stored position holds WAL back, so a crash that loses the last
//! second of reports never leaves a slot pointing at trimmed WAL.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::id::Ttid;
use crate::lsn::Lsn;
use crate::pq::{sqlstate, PgError};
use crate::store::writer::{Synced, WriterHandle};
use crate::store::{SlotRecord, SlotWrite};

pub use sqlstate::{DUPLICATE_OBJECT, INVALID_NAME, OBJECT_IN_USE};

/// Why a slot command failed: an SQLSTATE and PostgreSQL's wording.
pub type SlotError = PgError;

fn err(code: sqlstate::SqlState, message: String) -> SlotError {
    PgError::new(code, message)
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub temporary: bool,
    /// Where the consumer last said it flushed to (in memory).
    pub restart_lsn: Lsn,
    /// What the store holds (durable slots); the position WAL is kept for.
    pub stored_lsn: Lsn,
    pub invalidated: Option<String>,
    /// The session streaming from the slot.
    pub active: Option<u64>,
    /// The session a temporary slot belongs to.
    owner: Option<u64>,
}

impl Slot {
    /// The session using the slot, as PostgreSQL's active_pid: the one
    /// streaming from it, or the session a temporary slot belongs to (it
    /// stays acquired by its creator until that session ends).
    pub fn in_use_by(&self) -> Option<u64> {
        self.active.or(self.owner)
    }

    /// The position this slot holds WAL back for, if any.
    pub fn holds(&self) -> Option<Lsn> {
        let at = if self.temporary {
            self.restart_lsn
        } else {
            self.stored_lsn
        };
        (self.invalidated.is_none() && at.is_valid()).then_some(at)
    }

    fn record(&self, name: &str) -> SlotRecord {
        SlotRecord {
            name: name.to_string(),
            restart_lsn: self.restart_lsn,
            invalidated: self.invalidated.clone(),
        }
    }
}

pub struct Slots {
    map: Mutex<HashMap<Ttid, BTreeMap<String, Slot>>>,
    next_session: AtomicU64,
    /// Woken whenever a session ends and releases what it held
    /// (`DROP_REPLICATION_SLOT … WAIT` waits on it).
    released: Notify,
    /// `--max-replication-slots`: slots of every timeline together.
    max: usize,
}

/// A client connection's claim on slots: dropping it releases the slots it
/// streams from and drops its temporary ones, however the connection ends.
pub struct Session {
    pub id: u64,
    slots: Arc<Slots>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.slots.end_session(self.id);
    }
}

/// PostgreSQL's rule (ReplicationSlotValidateName): lower-case letters,
/// digits and underscores, 1 to 63 bytes.
pub fn validate_name(name: &str) -> Result<(), SlotError> {
    if name.is_empty() || name.len() > 63 {
        return Err(err(
            INVALID_NAME,
            format!("replication slot name \"{name}\" must be 1 to 63 characters long"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(err(
            INVALID_NAME,
            format!("replication slot name \"{name}\" contains invalid character: only lower case letters, numbers, and the underscore character are allowed"),
        ));
    }
    Ok(())
}

fn in_use(name: &str, session: u64) -> SlotError {
    err(
        OBJECT_IN_USE,
        format!("replication slot \"{name}\" is active for PID {session}"),
    )
}

fn shutting_down() -> SlotError {
    err(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command".into(),
    )
}

fn no_such_slot(name: &str) -> SlotError {
    err(
        sqlstate::UNDEFINED_OBJECT,
        format!("replication slot \"{name}\" does not exist"),
    )
}

impl Slots {
    /// The stored slots, and at most `max` slots in all: a slot beyond it
    /// is refused (stored ones beyond it, after a restart with a lower
    /// limit, stay).
    pub fn new(stored: Vec<(Ttid, SlotRecord)>, max: usize) -> Arc<Slots> {
        let mut map: HashMap<Ttid, BTreeMap<String, Slot>> = HashMap::new();
        for (ttid, r) in stored {
            map.entry(ttid).or_default().insert(
                r.name,
                Slot {
                    temporary: false,
                    restart_lsn: r.restart_lsn,
                    stored_lsn: r.restart_lsn,
                    invalidated: r.invalidated,
                    active: None,
                    owner: None,
                },
            );
        }
        Arc::new(Slots {
            map: Mutex::new(map),
            next_session: AtomicU64::new(1),
            released: Notify::new(),
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ttid, BTreeMap<String, Slot>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn session(self: &Arc<Self>) -> Session {
        Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            slots: self.clone(),
        }
    }

    /// Create a slot; a durable one is written through `writer` (await the
    /// receiver before answering). `reserve`: the position to hold WAL from.
    pub fn create(
        &self,
        writer: &WriterHandle,
        ttid: Ttid,
        name: &str,
        temporary: bool,
        reserve: Option<Lsn>,
        session: u64,
    ) -> Result<Option<Synced>, SlotError> {
        validate_name(name)?;
        let mut map = self.lock();
        if map.get(&ttid).is_some_and(|s| s.contains_key(name)) {
            return Err(err(
                DUPLICATE_OBJECT,
                format!("replication slot \"{name}\" already exists"),
            ));
        }
        if map.values().map(BTreeMap::len).sum::<usize>() >= self.max {
            return Err(err(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "all replication slots are in use: free one or increase --max-replication-slots (currently {})",
                    self.max
                ),
            ));
        }
        let slots = map.entry(ttid).or_default();
        let at = reserve.unwrap_or(Lsn::INVALID);
        let slot = Slot {
            temporary,
            restart_lsn: at,
            stored_lsn: at,
            invalidated: None,
            active: None,
            owner: temporary.then_some(session),
        };
        let synced = (!temporary)
            .then(|| writer.submit_slot(ttid, SlotWrite::Put(Box::new(slot.record(name)))));
        slots.insert(name.to_string(), slot);
        Ok(synced)
    }

    /// Forget a slot that failed to be stored.
    pub fn forget(&self, ttid: Ttid, name: &str) {
        if let Some(s) = self.lock().get_mut(&ttid) {
            s.remove(name);
        }
    }

    pub fn drop_slot(
        &self,
        writer: &WriterHandle,
        ttid: Ttid,
        name: &str,
        session: u64,
    ) -> Result<Option<Synced>, SlotError> {
        let mut map = self.lock();
        let slots = map.get_mut(&ttid).ok_or_else(|| no_such_slot(name))?;
        let slot = slots.get(name).ok_or_else(|| no_such_slot(name))?;
        if let Some(a) = slot.in_use_by().filter(|a| *a != session) {
            return Err(in_use(name, a));
        }
        let temporary = slot.temporary;
        slots.remove(name);
        // Submitted under the lock, so a flush of this slot queued by the
        // retention task cannot land after the delete and bring it back.
        Ok((!temporary).then(|| {
            writer.submit_slot(
                ttid,
                SlotWrite::Delete {
                    name: name.to_string(),
                },
            )
        }))
    }

    /// `DROP_REPLICATION_SLOT "s" WAIT`: like [`Slots::drop_slot`], but a
    /// slot another session uses is dropped once that session releases it
    /// (as PostgreSQL waits on the slot's condition variable) rather than
    /// refused. Gives up with 57P01 when the daemon shuts down.
    pub async fn drop_slot_wait(
        &self,
        writer: &WriterHandle,
        ttid: Ttid,
        name: &str,
        session: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Synced>, SlotError> {
        let mut logged = false;
        loop {
            // Registered before the check, so a release between the check
            // and the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.drop_slot(writer, ttid, name, session) {
                Err(e) if e.code == OBJECT_IN_USE => {
                    if !logged {
                        tracing::info!(timeline = %ttid, slot = %name, "DROP_REPLICATION_SLOT WAIT: waiting for the slot to be released ({})", e.message);
                        logged = true;
                    }
                }
                done => return done,
            }
            if *shutdown.borrow_and_update() {
                return Err(shutting_down());
            }
            tokio::select! {
                _ = &mut released => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Err(shutting_down());
                    }
                }
            }
        }
    }

    pub fn get(&self, ttid: Ttid, name: &str) -> Option<Slot> {
        self.lock().get(&ttid).and_then(|s| s.get(name)).cloned()
    }

    /// Claim a slot for streaming; its restart LSN. A slot that never held
    /// WAL starts holding it from where the stream starts.
    pub fn acquire(
        &self,
        ttid: Ttid,
        name: &str,
        session: u64,
        start: Lsn,
    ) -> Result<Lsn, SlotError> {
        let mut map = self.lock();
        let slot = map
            .get_mut(&ttid)
            .and_then(|s| s.get_mut(name))
            .ok_or_else(|| no_such_slot(name))?;
        if let Some(a) = slot.in_use_by().filter(|a| *a != session) {
            return Err(in_use(name, a));
        }
        if let Some(why) = &slot.invalidated {
            return Err(err(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("can no longer get changes from replication slot \"{name}\": {why}"),
            ));
        }
        slot.active = Some(session);
        if !slot.restart_lsn.is_valid() {
            slot.restart_lsn = start;
        }
        Ok(slot.restart_lsn)
    }

    /// A consumer's flush report. Like PostgreSQL's physical slots, a plain
    /// assignment: it may move back.
    pub fn confirm(&self, ttid: Ttid, name: &str, flush: Lsn) {
        if !flush.is_valid() {
            return;
        }
        if let Some(slot) = self.lock().get_mut(&ttid).and_then(|s| s.get_mut(name)) {
            if slot.invalidated.is_none() {
                slot.restart_lsn = flush;
            }
        }
    }

    /// The end of a stream from a slot: the slot is free for others
    /// (a temporary one stays its creator's until that session ends).
    pub fn release(&self, ttid: Ttid, name: &str, session: u64) {
        let released = match self.lock().get_mut(&ttid).and_then(|s| s.get_mut(name)) {
            Some(slot) if slot.active == Some(session) => {
                slot.active = None;
                true
            }
            _ => false,
        };
        if released {
            self.released.notify_waiters();
        }
    }

    fn end_session(&self, session: u64) {
        let mut released = false;
        {
            let mut map = self.lock();
            for slots in map.values_mut() {
                let before = slots.len();
                slots.retain(|_, s| s.owner != Some(session));
                released |= slots.len() != before;
                for s in slots.values_mut() {
                    if s.active == Some(session) {
                        s.active = None;
                        released = true;
                    }
                }
            }
        }
        if released {
            self.released.notify_waiters();
        }
    }

    /// Queue writes of every durable slot whose position moved since it was
    /// stored; the receivers resolve once they are synced.
    pub fn flush(&self, writer: &WriterHandle) -> Vec<(Ttid, String, Lsn, Synced)> {
        let map = self.lock();
        let mut out = Vec::new();
        for (ttid, slots) in map.iter() {
            for (name, s) in slots {
                if !s.temporary && s.invalidated.is_none() && s.restart_lsn != s.stored_lsn {
                    let rx = writer.submit_slot(*ttid, SlotWrite::Put(Box::new(s.record(name))));
                    out.push((*ttid, name.clone(), s.restart_lsn, rx));
                }
            }
        }
        out
    }

    /// Record that `lsn` reached the store. A position that moved back in
    /// the meantime is written again by the next flush.
    pub fn stored(&self, ttid: Ttid, name: &str, lsn: Lsn) {
        if let Some(s) = self.lock().get_mut(&ttid).and_then(|s| s.get_mut(name)) {
            s.stored_lsn = lsn;
        }
    }

    /// The lowest stored position of a durable slot of `ttid` (what
    /// AppendResponse reports to the proposer); INVALID: none.
    pub fn durable_horizon(&self, ttid: Ttid) -> Lsn {
        self.lock()
            .get(&ttid)
            .into_iter()
            .flat_map(|s| s.values())
            .filter(|s| !s.temporary)
            .filter_map(Slot::holds)
            .min()
            .unwrap_or(Lsn::INVALID)
    }

    /// Every slot of `ttid` holding WAL back here, temporary ones included:
    /// (name, position).
    pub fn holders(&self, ttid: Ttid) -> Vec<(String, Lsn)> {
        self.lock()
            .get(&ttid)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|(n, s)| s.holds().map(|l| (n.clone(), l)))
            .collect()
    }

    /// Mark a slot invalidated (it stops holding WAL); a durable one is
    /// stored so, and stays so across restarts, as in PostgreSQL.
    pub fn invalidate(
        &self,
        writer: &WriterHandle,
        ttid: Ttid,
        name: &str,
        reason: String,
    ) -> Option<Synced> {
        let mut map = self.lock();
        let s = map.get_mut(&ttid)?.get_mut(name)?;
        s.invalidated = Some(reason);
        s.restart_lsn = Lsn::INVALID;
        s.stored_lsn = Lsn::INVALID;
        (!s.temporary).then(|| writer.submit_slot(ttid, SlotWrite::Put(Box::new(s.record(name)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_postgresql() {
        assert!(validate_name("s1").is_ok());
        assert!(validate_name("pg_walreceiver_123").is_ok());
        assert_eq!(validate_name("S1").unwrap_err().code, INVALID_NAME);
        assert_eq!(validate_name("").unwrap_err().code, INVALID_NAME);
        assert!(validate_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn a_session_claims_and_releases_and_takes_its_temporary_slots_along() {
        let slots = Slots::new(
            vec![(
                Ttid::default(),
                SlotRecord {
                    name: "d".into(),
                    restart_lsn: Lsn(100),
                    invalidated: None,
                },
            )],
            10,
        );
        let t = Ttid::default();
        let a = slots.session();
        let b = slots.session();
        assert_eq!(slots.acquire(t, "d", a.id, Lsn(5)), Ok(Lsn(100)));
        assert_eq!(
            slots.acquire(t, "d", b.id, Lsn(5)).unwrap_err().code,
            OBJECT_IN_USE
        );
        slots.confirm(t, "d", Lsn(200));
        // Only what is stored holds WAL back.
        assert_eq!(slots.durable_horizon(t), Lsn(100));
        slots.stored(t, "d", Lsn(200));
        assert_eq!(slots.durable_horizon(t), Lsn(200));
        // Only the streaming session's release (its stream ended) frees it.
        slots.release(t, "d", b.id);
        assert_eq!(
            slots.acquire(t, "d", b.id, Lsn(5)).unwrap_err().code,
            OBJECT_IN_USE
        );
        slots.release(t, "d", a.id);
        assert_eq!(slots.acquire(t, "d", b.id, Lsn(5)), Ok(Lsn(200)));
        // So does the end of the session.
        drop(b);
        assert_eq!(slots.acquire(t, "d", a.id, Lsn(5)), Ok(Lsn(200)));
        assert!(slots.acquire(t, "nope", a.id, Lsn(5)).is_err());
    }

    #[tokio::test]
    async fn drop_waits_for_the_slot_to_be_released_only_when_asked_to() {
        use std::time::Duration;
        let writer =
            crate::store::writer::GroupCommitWriter::start(crate::store::memory::MemStorage::new());
        let h = writer.handle();
        let t = Ttid::default();
        let slots = Slots::new(
            vec![(
                t,
                SlotRecord {
                    name: "d".into(),
                    restart_lsn: Lsn(100),
                    invalidated: None,
                },
            )],
            10,
        );
        let (stop, shutdown) = watch::channel(false);
        let a = slots.session();
        let b = slots.session();
        slots.acquire(t, "d", a.id, Lsn(5)).unwrap();
        // Without WAIT: refused, naming the session that streams.
        let e = slots.drop_slot(&h, t, "d", b.id).unwrap_err();
        assert_eq!(e.code, OBJECT_IN_USE);
        assert_eq!(
            e.message,
            format!("replication slot \"d\" is active for PID {}", a.id)
        );
        // With WAIT: dropped once the stream's session ends, not before.
        let wait = slots.drop_slot_wait(&h, t, "d", b.id, shutdown.clone());
        tokio::pin!(wait);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut wait)
            .await
            .is_err());
        assert!(slots.get(t, "d").is_some());
        drop(a);
        let synced = wait.await.unwrap().expect("a durable slot's delete");
        assert!(matches!(synced.await, Ok(Ok(()))));
        assert!(slots.get(t, "d").is_none());
        // A slot nobody uses is dropped at once; a missing one is an error.
        slots.create(&h, t, "e", false, None, b.id).unwrap();
        let dropped = slots.drop_slot_wait(&h, t, "e", b.id, shutdown.clone());
        assert!(dropped.await.is_ok());
        let e = slots
            .drop_slot_wait(&h, t, "e", b.id, shutdown.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code, sqlstate::UNDEFINED_OBJECT);

        // A temporary slot stays in use by the session that made it, as in
        // PostgreSQL; a waiter then finds it gone with that session.
        let c = slots.session();
        slots
            .create(&h, t, "tmp", true, Some(Lsn(5)), c.id)
            .unwrap();
        assert_eq!(
            slots.drop_slot(&h, t, "tmp", b.id).unwrap_err().code,
            OBJECT_IN_USE
        );
        assert_eq!(
            slots.acquire(t, "tmp", b.id, Lsn(5)).unwrap_err().code,
            OBJECT_IN_USE
        );
        assert_eq!(slots.acquire(t, "tmp", c.id, Lsn(5)), Ok(Lsn(5)));
        let wait = slots.drop_slot_wait(&h, t, "tmp", b.id, shutdown.clone());
        tokio::pin!(wait);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut wait)
            .await
            .is_err());
        drop(c);
        assert_eq!(wait.await.unwrap_err().code, sqlstate::UNDEFINED_OBJECT);

        // A shutdown ends a wait.
        let d = slots.session();
        slots.create(&h, t, "f", false, None, d.id).unwrap();
        slots.acquire(t, "f", d.id, Lsn(5)).unwrap();
        let wait = slots.drop_slot_wait(&h, t, "f", b.id, shutdown.clone());
        tokio::pin!(wait);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut wait)
            .await
            .is_err());
        stop.send(true).unwrap();
        assert_eq!(wait.await.unwrap_err().code, sqlstate::ADMIN_SHUTDOWN);
        assert!(slots.get(t, "f").is_some());
    }

    #[test]
    fn slots_of_every_timeline_together_are_capped_as_max_replication_slots() {
        let writer =
            crate::store::writer::GroupCommitWriter::start(crate::store::memory::MemStorage::new());
        let h = writer.handle();
        use crate::id::{TenantId, TimelineId};
        let (t, u) = (
            Ttid::default(),
            Ttid::new(TenantId([1; 16]), TimelineId([2; 16])),
        );
        let slots = Slots::new(Vec::new(), 2);
        let s = slots.session();
        slots.create(&h, t, "a", false, None, s.id).unwrap();
        slots.create(&h, u, "b", true, None, s.id).unwrap();
        // A duplicate is still a duplicate; any new one is one too many.
        let dup = slots.create(&h, t, "a", false, None, s.id).unwrap_err();
        assert_eq!(dup.code, DUPLICATE_OBJECT);
        let full = slots.create(&h, u, "c", false, None, s.id).unwrap_err();
        assert_eq!(full.code, sqlstate::CONFIGURATION_LIMIT_EXCEEDED);
        assert!(full.message.contains("all replication slots are in use"));
        // The temporary one goes with its session, and makes room.
        drop(s);
        let s = slots.session();
        slots.create(&h, u, "c", false, None, s.id).unwrap();
    }
}
