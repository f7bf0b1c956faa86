//! Who may connect and what they may do: the users file (user, role,
//! SCRAM-SHA-256 verifier), the roles, and what each command needs.
//!
//! - [`verifier`]: PostgreSQL's `SCRAM-SHA-256$…` verifier format.
//! - [`scram`]: the server side of the SCRAM-SHA-256 exchange, sans-IO.
//! - [`users`]: the users file the operator manages.
//! - [`role`]: roles and the privilege each command needs.
//! - [`password`]: reading a password from a terminal or stdin (`skctl`).

pub mod password;
pub mod role;
pub mod scram;
pub mod users;
pub mod verifier;

pub use role::{Privilege, Role};
pub use users::{User, Users};
pub use verifier::Verifier;
