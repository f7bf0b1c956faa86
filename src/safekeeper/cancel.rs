//! PostgreSQL's cancel requests. Every connection is told a process id and
//! a secret key (BackendKeyData). A CancelRequest on a new connection that
//! quotes both interrupts what that connection is waiting for (psql sends
//! one on Ctrl-C). Only `DROP_REPLICATION_SLOT … WAIT` waits for long
//! enough to need it; elsewhere a cancel is ignored, as PostgreSQL ignores
//! a cancel that arrives while no query runs.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Cancels {
    /// process id → (secret key, what to wake).
    map: Mutex<HashMap<i32, (i32, Arc<Notify>)>>,
}

/// One connection's entry; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    process_id: i32,
    secret_key: i32,
    notify: Arc<Notify>,
    cancels: Arc<Cancels>,
}

impl Cancels {
    /// Register the connection numbered `session` (numbered from 1; the
    /// process id clients are told, as 55006 messages name it).
    pub fn register(self: &Arc<Self>, session: u64) -> Registration {
        // Process ids are positive i32s; numbers past i32::MAX wrap.
        let process_id = (session.saturating_sub(1) % i32::MAX as u64) as i32 + 1;
        let notify = Arc::new(Notify::new());
        let secret_key = random_key();
        self.lock().insert(process_id, (secret_key, notify.clone()));
        Registration {
            process_id,
            secret_key,
            notify,
            cancels: self.clone(),
        }
    }

    /// A CancelRequest: wakes the connection if the key matches. Whether
    /// it did, for the log.
    pub fn cancel(&self, process_id: i32, secret_key: i32) -> bool {
        match self.lock().get(&process_id) {
            Some((key, notify)) if *key == secret_key => {
                notify.notify_waiters();
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Arc<Notify>)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Registration {
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    pub fn secret_key(&self) -> i32 {
        self.secret_key
    }

    /// Resolves when a cancel for this connection arrives after the call
    /// (a cancel with nothing waiting is lost, as in PostgreSQL).
    pub fn requested(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.cancels.lock();
        if map
            .get(&self.process_id)
            .is_some_and(|(key, _)| *key == self.secret_key)
        {
            map.remove(&self.process_id);
        }
    }
}

/// A key nobody else can guess from what they see of the server.
fn random_key() -> i32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return i32::from_ne_bytes(b);
    }
    // No /dev/urandom: std's per-process random hash keys.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    h.finish() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_with_the_right_key_wakes_only_its_connection() {
        let cancels = Arc::new(Cancels::default());
        let a = cancels.register(1);
        let b = cancels.register(2);
        assert_ne!(a.process_id(), b.process_id());
        let waiting = a.requested();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        assert!(!cancels.cancel(a.process_id(), a.secret_key().wrapping_add(1)));
        assert!(!cancels.cancel(b.process_id() + 100, b.secret_key()));
        assert!(cancels.cancel(a.process_id(), a.secret_key()));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the cancel woke the waiter");
        // Gone with its connection.
        let (pid, key) = (b.process_id(), b.secret_key());
        drop(b);
        assert!(!cancels.cancel(pid, key));
    }
}
