//! Roles and privileges. A connection's role comes from the users file
//! once it authenticated; every command needs a privilege (the daemon's
//! `safekeeper::auth::privilege`, a match on the parsed command) and the
//! role grants it or not. Decided on these types, never on command text.

use std::fmt;
use std::str::FromStr;

/// What an authenticated user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The proxy: pushes WAL, votes, raises terms, settles; reads too.
    Proposer,
    /// Standbys, pg_receivewal, page servers: committed WAL, slots,
    /// IDENTIFY_SYSTEM, TIMELINE_HISTORY. Nothing that changes the
    /// consensus state.
    Consumer,
    /// The operator: everything, and the HTTP operations that change
    /// state (checkpoints).
    Admin,
}

/// What a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Read committed WAL and what describes it; manage one's slots.
    Consume,
    /// Change the consensus state: push WAL, vote, raise a term, store a
    /// history file, settle; read WAL not yet committed (recovery reads).
    Propose,
}

impl Role {
    pub fn allows(self, p: Privilege) -> bool {
        match (self, p) {
            (Role::Admin | Role::Proposer, _) => true,
            (Role::Consumer, Privilege::Consume) => true,
            (Role::Consumer, Privilege::Propose) => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proposer => "proposer",
            Role::Consumer => "consumer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "proposer" => Ok(Role::Proposer),
            "consumer" => Ok(Role::Consumer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?}: expected proposer, consumer or admin"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_only_consume() {
        assert!(Role::Consumer.allows(Privilege::Consume));
        assert!(!Role::Consumer.allows(Privilege::Propose));
        for r in [Role::Proposer, Role::Admin] {
            assert!(r.allows(Privilege::Consume) && r.allows(Privilege::Propose));
        }
        for r in [Role::Proposer, Role::Consumer, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
