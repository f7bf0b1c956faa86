//! SQLSTATE codes (PostgreSQL's `errcodes.txt`) the daemon answers with.
//! Clients act on some of them: libpq moves to the next host of a multi-host
//! conninfo on `CANNOT_CONNECT_NOW` received before authentication.

pub const SUCCESSFUL_COMPLETION: &str = "00000";
pub const CONNECTION_FAILURE: &str = "08006";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const INVALID_PARAMETER_VALUE: &str = "22023";
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const SYNTAX_ERROR: &str = "42601";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const INVALID_NAME: &str = "42602";
pub const UNDEFINED_OBJECT: &str = "42704";
pub const DUPLICATE_OBJECT: &str = "42710";
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
pub const OBJECT_IN_USE: &str = "55006";
pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const DISK_FULL: &str = "53100";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const UNDEFINED_FILE: &str = "58P01";
pub const INTERNAL_ERROR: &str = "XX000";
pub const DATA_CORRUPTED: &str = "XX001";
