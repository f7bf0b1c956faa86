//! PostgreSQL's cancel requests. Every connection is told a process id and
//! a secret key (BackendKeyData). A CancelRequest on a new connection that
//! quotes both interrupts the command that connection is running (psql
//! sends one on Ctrl-C). Only `DROP_REPLICATION_SLOT … WAIT` waits for long
//! enough to need it; a cancel that arrives while a command runs but before
//! it waits is kept for the wait, and one that arrives between commands is
//! dropped, as PostgreSQL does.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Cancels {
    /// process id → (secret key, that connection's cancel state).
    map: Mutex<HashMap<i32, (i32, Arc<CancelState>)>>,
}

#[derive(Debug, Default)]
struct CancelState {
    /// A command is running; a cancel now is for it.
    running: AtomicBool,
    /// A cancel arrived for the running command.
    pending: AtomicBool,
    wake: Notify,
}

/// One connection's entry; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    process_id: i32,
    secret_key: i32,
    state: Arc<CancelState>,
    cancels: Arc<Cancels>,
}

/// While it lives, the connection runs a command that a cancel interrupts.
#[must_use]
pub struct Running<'a>(&'a CancelState);

impl Cancels {
    /// Register the connection numbered `session` (numbered from 1; the
    /// process id clients are told, as 55006 messages name it).
    pub fn register(self: &Arc<Self>, session: u64) -> Registration {
        // Process ids are positive i32s; numbers past i32::MAX wrap.
        let process_id = (session.saturating_sub(1) % i32::MAX as u64) as i32 + 1;
        let state = Arc::new(CancelState::default());
        let secret_key = random_key();
        self.lock().insert(process_id, (secret_key, state.clone()));
        Registration {
            process_id,
            secret_key,
            state,
            cancels: self.clone(),
        }
    }

    /// A CancelRequest: interrupts the connection's running command if the
    /// key matches. Whether the key matched, for the log.
    pub fn cancel(&self, process_id: i32, secret_key: i32) -> bool {
        match self.lock().get(&process_id) {
            Some((key, state)) if *key == secret_key => {
                if state.running.load(Ordering::SeqCst) {
                    state.pending.store(true, Ordering::SeqCst);
                    state.wake.notify_waiters();
                }
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Arc<CancelState>)>> {
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

    /// Mark a command as running until the guard drops: cancels that
    /// arrive meanwhile are for it, not lost before it starts waiting.
    pub fn command(&self) -> Running<'_> {
        self.state.pending.store(false, Ordering::SeqCst);
        self.state.running.store(true, Ordering::SeqCst);
        Running(&self.state)
    }

    /// Resolves once a cancel for the running command has arrived, also
    /// one that arrived before this call.
    pub async fn requested(&self) {
        loop {
            let woken = self.state.wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so a cancel between the check
            // and the await still wakes us.
            woken.as_mut().enable();
            if self.state.pending.load(Ordering::SeqCst) {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
        self.0.pending.store(false, Ordering::SeqCst);
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
    use std::time::Duration;

    #[tokio::test]
    async fn a_cancel_with_the_right_key_interrupts_only_its_connection() {
        let cancels = Arc::new(Cancels::default());
        let a = cancels.register(1);
        let b = cancels.register(2);
        assert_ne!(a.process_id(), b.process_id());
        let _a_runs = a.command();
        let _b_runs = b.command();
        let waiting = a.requested();
        tokio::pin!(waiting);
        assert!(!cancels.cancel(a.process_id(), a.secret_key().wrapping_add(1)));
        assert!(!cancels.cancel(b.process_id() + 100, b.secret_key()));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err(),
            "a wrong key interrupted the command"
        );
        assert!(cancels.cancel(a.process_id(), a.secret_key()));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the cancel woke the waiter");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.requested())
                .await
                .is_err(),
            "the cancel for one connection interrupted another"
        );
        // Gone with its connection.
        let (pid, key) = (b.process_id(), b.secret_key());
        drop(_b_runs);
        drop(b);
        assert!(!cancels.cancel(pid, key));
    }

    #[tokio::test]
    async fn a_cancel_before_the_wait_is_kept_for_it_but_not_for_the_next_command() {
        let cancels = Arc::new(Cancels::default());
        let a = cancels.register(1);
        let running = a.command();
        assert!(cancels.cancel(a.process_id(), a.secret_key()));
        tokio::time::timeout(Duration::from_secs(5), a.requested())
            .await
            .expect("a cancel that came before the wait interrupts it");
        drop(running);

        // Between commands a cancel has nothing to interrupt.
        assert!(cancels.cancel(a.process_id(), a.secret_key()));
        let _next = a.command();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.requested())
                .await
                .is_err(),
            "a cancel sent between commands interrupted the next one"
        );
    }
}
