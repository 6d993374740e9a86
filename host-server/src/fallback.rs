//! The SQLite fallback: when dns-cache is down, dummy addresses it handed out before still
//! resolve, read straight from its database file (read-only; dns-cache stays the only writer).
//!
//! Reads are blocking, so callers run [`lookup_blocking`] on the blocking pool
//! (`tokio::task::spawn_blocking`), never on the reactor. The schema is migrations/0001: the
//! `mappings` table keys each dummy (a 32-bit number) to the canonical IPv6 text.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

/// Why the database could not answer.
#[derive(Debug, Error)]
pub enum FallbackError {
    #[error("cannot read the mapping database")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the mapping database holds an invalid IPv6 address {0:?}")]
    BadAddress(String),
}

/// Opens `db` read-only and returns the IPv6 address of `dummy`, or `None` when no row has it.
///
/// # Errors
/// [`FallbackError`] when the file cannot be opened or read.
pub fn lookup_blocking(db: &Path, dummy: Ipv4Addr) -> Result<Option<Ipv6Addr>, FallbackError> {
    // A fresh connection per look-up keeps no file open while dns-cache runs (look-ups only
    // come here while it is down) and sees its latest commits; WAL readers never block it.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(500))?;
    let text: Option<String> = conn
        .query_row(
            "SELECT ipv6 FROM mappings WHERE ipv4 = ?1",
            [i64::from(u32::from(dummy))],
            |row| row.get(0),
        )
        .optional()?;
    text.map(|t| t.parse().map_err(|_| FallbackError::BadAddress(t)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema as dns-cache creates it (migrations/0001_mappings.sql), applied to a scratch DB.
    fn make_db(path: &Path) {
        let sql = include_str!("../../migrations/0001_mappings.sql");
        let c = Connection::open(path).unwrap();
        c.execute_batch(sql).unwrap();
        c.execute(
            "INSERT INTO mappings (ipv4, ipv6, direction, created_ms, last_used_ms, expires_ms)
             VALUES (?1, 'fd00:64::e', 'synthesised', 0, 0, 0)",
            [i64::from(u32::from(Ipv4Addr::new(10, 170, 160, 7)))],
        )
        .unwrap();
    }

    #[test]
    fn finds_known_dummies_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("m.sqlite3");
        make_db(&db);
        assert_eq!(
            lookup_blocking(&db, Ipv4Addr::new(10, 170, 160, 7)).unwrap(),
            Some("fd00:64::e".parse().unwrap())
        );
        assert_eq!(
            lookup_blocking(&db, Ipv4Addr::new(10, 170, 160, 8)).unwrap(),
            None
        );
    }

    #[test]
    fn missing_file_is_an_error_not_a_creation() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("absent.sqlite3");
        assert!(lookup_blocking(&db, Ipv4Addr::new(10, 170, 160, 7)).is_err());
        assert!(!db.exists());
    }
}
