//! The users file: one user a line, `NAME ROLE VERIFIER`, blank lines and
//! `#` comments ignored. The verifier is PostgreSQL's
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (what
//! `skctl user` writes, or `SELECT rolpassword FROM pg_authid` shows):
//! no password is ever stored.
//!
//! ```text
//! # user     role      verifier
//! proxy      proposer  SCRAM-SHA-256$4096:…$…:…
//! standby    consumer  SCRAM-SHA-256$4096:…$…:…
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Role, Verifier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub role: Role,
    pub verifier: Verifier,
}

/// Every user of the users file, by name.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("users file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {}, line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("users file {}: no users (add lines with `skctl user NAME --role ROLE >> FILE`)", path.display())]
    Empty { path: PathBuf },
}

impl Users {
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Read and check the file; refuses an empty one (it would lock
    /// everyone out) and warns when others may read it.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        warn_if_readable_by_others(path);
        let users = Users::parse(&text).map_err(|(line, reason)| UsersError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
        if users.is_empty() {
            return Err(UsersError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(users)
    }

    /// Parse the file's text; the failing line (1-based) and why.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut by_name = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, verifier] = fields[..] else {
                return Err((
                    i + 1,
                    format!("expected NAME ROLE VERIFIER, found {} fields", fields.len()),
                ));
            };
            let role: Role = role.parse().map_err(|e| (i + 1, e))?;
            let verifier: Verifier = verifier.parse().map_err(|e| (i + 1, e))?;
            if by_name
                .insert(name.to_string(), User { role, verifier })
                .is_some()
            {
                return Err((i + 1, format!("user {name:?} is listed twice")));
            }
        }
        Ok(Users { by_name })
    }
}

/// The line `skctl user` prints for a new user.
pub fn line(name: &str, role: Role, verifier: &Verifier) -> String {
    format!("{name} {role} {verifier}")
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the users file may be read by others: its verifiers allow offline password guessing; chmod 600 it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_refusals() {
        let v = Verifier::from_password("pw");
        let text = format!(
            "# users\n\n{}\n  {}  \n",
            line("proxy", Role::Proposer, &v),
            line("standby", Role::Consumer, &v)
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.get("proxy").unwrap().role, Role::Proposer);
        assert_eq!(users.get("standby").unwrap().verifier, v);
        assert!(users.get("nobody").is_none());

        let twice = format!(
            "{}\n{}\n",
            line("a", Role::Admin, &v),
            line("a", Role::Consumer, &v)
        );
        assert_eq!(Users::parse(&twice).unwrap_err().0, 2);
        assert_eq!(Users::parse("a consumer\n").unwrap_err().0, 1);
        assert!(Users::parse("a root SCRAM-SHA-256$1:AA==$x:y\n").is_err());
        assert!(Users::parse("a consumer plaintext\n").is_err());
    }
}
