//! SQLSTATE codes (PostgreSQL's `errcodes.txt`) the daemon answers with.
//! Clients act on some of them: libpq moves to the next host of a multi-host
//! conninfo on `CANNOT_CONNECT_NOW` received before authentication.

use std::fmt;

/// One SQLSTATE: a code of [`errcodes.txt`] the daemon answers with (the
/// constants below); its five characters go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// The five characters, as sent in an ErrorResponse's `C` field.
    pub const fn code(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl AsRef<str> for SqlState {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl PartialEq<&str> for SqlState {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

pub const SUCCESSFUL_COMPLETION: SqlState = SqlState("00000");
pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
pub const SYNTAX_ERROR: SqlState = SqlState("42601");
pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
pub const INVALID_NAME: SqlState = SqlState("42602");
pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
pub const DUPLICATE_OBJECT: SqlState = SqlState("42710");
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
pub const OBJECT_IN_USE: SqlState = SqlState("55006");
pub const QUERY_CANCELED: SqlState = SqlState("57014");
pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
pub const DISK_FULL: SqlState = SqlState("53100");
pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState("53400");
pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
pub const UNDEFINED_FILE: SqlState = SqlState("58P01");
pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
pub const DATA_CORRUPTED: SqlState = SqlState("XX001");
