//! The mapping database: SQLite in WAL mode, schema from the numbered files in `migrations/`.
//!
//! dns-cache is the only writer. Each batch of changes is one transaction; the DNS side waits
//! for the commit of a new mapping before answering with it (see [`crate::persist`]).
//!
//! Durability, decided: with WAL and `synchronous=NORMAL` ([`Durability::ProcessCrash`], the
//! default) a committed transaction is in the WAL file in the kernel's page cache before
//! `COMMIT` returns, so it survives `kill -9` of dns-cache and any crash of the process; only a
//! power loss or kernel crash can lose the last transactions, and those take the guests'
//! connections with them. `synchronous=FULL` ([`Durability::PowerLoss`]) adds an fsync per
//! batch for hosts that want that guarantee too.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::clock::UnixMillis;
use crate::mapping::{Direction, Mapping, Touch};

/// The numbered migrations, in order. Forward-only: a released file never changes.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_mappings.sql")),
    (2, include_str!("../../migrations/0002_static_mappings.sql")),
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer dns-cache.
    #[error("the database has schema version {found}, newer than the {known} this program knows")]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Highest version this program knows.
        known: i64,
    },
    /// The file at start is not an intact mapping database. It is left exactly as it is:
    /// recreating it would lose every mapping a guest may still hold.
    #[error("{path} is not an intact mapping database ({detail}); it was left untouched: restore a backup, or move it away to start with no mappings")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite found.
        detail: String,
    },
    /// A row holds something this program never writes.
    #[error("row for {ipv4} is corrupt: {reason}")]
    CorruptRow {
        /// The row's address.
        ipv4: Ipv4Addr,
        /// What is wrong.
        reason: String,
    },
}

/// How much of a crash a committed mapping survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Survives the process being killed (WAL, `synchronous=NORMAL`).
    #[default]
    ProcessCrash,
    /// Survives power loss too (WAL, `synchronous=FULL`, one fsync per batch).
    PowerLoss,
}

/// What kind of storage fault a failed write met, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The file system is full (`SQLITE_FULL`).
    Full,
    /// The file or its file system is read-only (`SQLITE_READONLY`).
    ReadOnly,
    /// Another process holds the write lock (`SQLITE_BUSY`/`SQLITE_LOCKED`).
    Locked,
    /// The operating system failed a read or write (`SQLITE_IOERR`, `SQLITE_CANTOPEN`).
    Io,
    /// SQLite found the file damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`).
    Corrupt,
    /// Anything else.
    Other,
}

impl Fault {
    /// Every kind, in the order of [`Fault::index`].
    pub const ALL: [Fault; 6] = [
        Fault::Full,
        Fault::ReadOnly,
        Fault::Locked,
        Fault::Io,
        Fault::Corrupt,
        Fault::Other,
    ];

    /// Classifies a store error.
    #[must_use]
    pub fn of(e: &StoreError) -> Self {
        let StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) = e else {
            return match e {
                StoreError::Corrupt { .. } | StoreError::CorruptRow { .. } => Fault::Corrupt,
                _ => Fault::Other,
            };
        };
        match f.code {
            ErrorCode::DiskFull => Fault::Full,
            ErrorCode::ReadOnly => Fault::ReadOnly,
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Fault::Locked,
            ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => Fault::Io,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Fault::Corrupt,
            _ => Fault::Other,
        }
    }

    /// The metric label and log word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Full => "disk_full",
            Fault::ReadOnly => "read_only",
            Fault::Locked => "locked",
            Fault::Io => "io_error",
            Fault::Corrupt => "corrupt",
            Fault::Other => "other",
        }
    }

    /// This kind's position in [`Fault::ALL`].
    #[must_use]
    pub fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(5)
    }

    /// What an operator can do about it, for the log line.
    #[must_use]
    pub fn hint(self) -> &'static str {
        match self {
            Fault::Full => "free space on the database's file system",
            Fault::ReadOnly => {
                "the database's file system went read-only: repair and mount it again at the same path"
            }
            Fault::Locked => {
                "another process holds the database's write lock (an open sqlite3 transaction?)"
            }
            Fault::Io => "the disk fails reads or writes",
            Fault::Corrupt => "the database file is damaged",
            Fault::Other => "see the error",
        }
    }
}

/// How long a write waits for another process's lock before it fails and is retried.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// An open mapping database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// Where it was opened from, for [`Store::reopen`] (none in memory).
    path: Option<PathBuf>,
    durability: Durability,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations. A file
    /// that is not an intact database is refused ([`StoreError::Corrupt`]), never recreated.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(path, durability, OpenFlags::default())
    }

    fn open_with(
        path: &Path,
        durability: Durability,
        flags: OpenFlags,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(path, flags)?;
        // SQLite falls back to a read-only connection where the file cannot be opened for
        // writing (a read-only file system); that is a fault here, not a database.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some(format!("{} can only be opened read-only", path.display())),
            )));
        }
        Self::setup(conn, Some(path.to_path_buf()), durability).map_err(|e| {
            // SQLite's own word that the file is damaged, or is no database at all.
            if matches!(e, StoreError::Sqlite(_)) && Fault::of(&e) == Fault::Corrupt {
                StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            } else {
                e
            }
        })
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(
            Connection::open_in_memory()?,
            None,
            Durability::ProcessCrash,
        )
    }

    /// Opens the database at `path` only if the file exists: after a storage fault, a file
    /// system not mounted back yet shows the empty directory beneath it, and a new file there
    /// would take the writes.
    pub fn open_existing(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(
            path,
            durability,
            OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE,
        )
    }

    /// Where this database was opened from, and how durably (none in memory).
    #[must_use]
    pub fn location(&self) -> Option<(PathBuf, Durability)> {
        self.path.clone().map(|p| (p, self.durability))
    }

    /// SQLite's quick integrity check; a damaged file is [`StoreError::Corrupt`].
    fn check_intact(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone().unwrap_or_default();
        let verdict: Result<String, _> = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0));
        match verdict {
            Ok(v) if v == "ok" => Ok(()),
            Ok(v) => Err(StoreError::Corrupt { path, detail: v }),
            Err(e) => Err(StoreError::Corrupt {
                path,
                detail: e.to_string(),
            }),
        }
    }

    fn setup(
        conn: Connection,
        path: Option<PathBuf>,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        // host-server may read while we write; WAL lets readers proceed during a write.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::ProcessCrash => "NORMAL",
                Durability::PowerLoss => "FULL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mut store = Self {
            conn,
            path,
            durability,
        };
        if store.path.is_some() {
            // Before anything is written: a damaged file must not be migrated over.
            store.check_intact()?;
        }
        store.migrate()?;
        Ok(store)
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .unwrap_or(0))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version    INTEGER PRIMARY KEY,
                 applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
             );",
        )?;
        let current = self.schema_version()?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![version],
            )?;
            tx.commit()?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }

    /// Every stored mapping.
    pub fn load_all(&self) -> Result<Vec<Mapping>, StoreError> {
        let mut names_stmt = self
            .conn
            .prepare("SELECT ipv4, name FROM mapping_names ORDER BY ipv4, rowid")?;
        let mut names: std::collections::HashMap<u32, Vec<String>> = Default::default();
        let rows =
            names_stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (n, name) = row?;
            if let Ok(n) = u32::try_from(n) {
                names.entry(n).or_default().push(name);
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT m.ipv4, m.ipv6, m.direction, m.created_ms, m.last_used_ms, m.expires_ms,
                    m.pins, s.ipv4 IS NOT NULL
             FROM mappings m LEFT JOIN static_mappings s ON s.ipv4 = m.ipv4
             ORDER BY m.ipv4",
        )?;
        let raw = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in raw {
            let (n, v6, dir, created, last_used, expires, pins, fixed) = row?;
            let n = u32::try_from(n).map_err(|_| StoreError::CorruptRow {
                ipv4: Ipv4Addr::UNSPECIFIED,
                reason: format!("ipv4 value {n} is not a 32-bit address"),
            })?;
            let ipv4 = Ipv4Addr::from(n);
            let corrupt = |reason: String| StoreError::CorruptRow { ipv4, reason };
            let v6: Ipv6Addr = v6
                .parse()
                .map_err(|_| corrupt(format!("`{v6}` is not an IPv6 address")))?;
            let direction = Direction::parse(&dir)
                .ok_or_else(|| corrupt(format!("unknown direction `{dir}`")))?;
            out.push(Mapping {
                v4: ipv4,
                v6,
                direction,
                names: names.remove(&n).unwrap_or_default(),
                created: UnixMillis::from_i64(created),
                last_used: UnixMillis::from_i64(last_used),
                expires: UnixMillis::from_i64(expires),
                pins: u32::try_from(pins).unwrap_or(0),
                fixed,
            });
        }
        Ok(out)
    }

    /// Sets every pin count to 0 and returns how many rows had pins. Called at start: pins are
    /// leases of dns.sock connections, and no connection outlives the process that served it.
    pub fn reset_pins(&self) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("UPDATE mappings SET pins = 0 WHERE pins <> 0", [])?)
    }

    /// Writes a batch of changes in one transaction. Upserts replace the whole row (and its
    /// names); deletes remove the row of an address.
    pub fn write_batch(
        &mut self,
        upserts: &[Mapping],
        deletes: &[Ipv4Addr],
    ) -> Result<(), StoreError> {
        self.write_changes(upserts, &[], deletes)
    }

    /// [`Store::write_batch`] plus `touches`: rows of which only the last use, the expiry and
    /// the pin count changed, written with one UPDATE each.
    pub fn write_changes(
        &mut self,
        upserts: &[Mapping],
        touches: &[Touch],
        deletes: &[Ipv4Addr],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut touch = tx.prepare_cached(
                "UPDATE mappings SET last_used_ms = ?2, expires_ms = ?3, pins = ?4
                 WHERE ipv4 = ?1",
            )?;
            for t in touches {
                touch.execute(params![
                    u32::from(t.v4),
                    t.last_used.as_i64(),
                    t.expires.as_i64(),
                    t.pins
                ])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM mappings WHERE ipv4 = ?1")?;
            for v4 in deletes {
                delete.execute(params![u32::from(*v4)])?;
            }
            // A recycled address's old row goes first, and an IPv6 address that moved to a
            // new dummy (after a flush) must leave its old row before the UNIQUE check.
            let mut clear_v6 = tx.prepare_cached(
                "DELETE FROM mappings WHERE ipv6 = ?1 AND direction = ?2 AND ipv4 <> ?3",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO mappings
                     (ipv4, ipv6, direction, created_ms, last_used_ms, expires_ms, pins)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (ipv4) DO UPDATE SET
                     ipv6 = excluded.ipv6, direction = excluded.direction,
                     created_ms = excluded.created_ms, last_used_ms = excluded.last_used_ms,
                     expires_ms = excluded.expires_ms, pins = excluded.pins",
            )?;
            let mut clear_names = tx.prepare_cached("DELETE FROM mapping_names WHERE ipv4 = ?1")?;
            let mut set_static =
                tx.prepare_cached("INSERT OR IGNORE INTO static_mappings (ipv4) VALUES (?1)")?;
            let mut clear_static =
                tx.prepare_cached("DELETE FROM static_mappings WHERE ipv4 = ?1")?;
            let mut add_name = tx.prepare_cached(
                "INSERT OR IGNORE INTO mapping_names (ipv4, name) VALUES (?1, ?2)",
            )?;
            for m in upserts {
                let n = u32::from(m.v4);
                let v6 = m.v6.to_string();
                clear_v6.execute(params![v6, m.direction.as_str(), n])?;
                upsert.execute(params![
                    n,
                    v6,
                    m.direction.as_str(),
                    m.created.as_i64(),
                    m.last_used.as_i64(),
                    m.expires.as_i64(),
                    m.pins,
                ])?;
                clear_names.execute(params![n])?;
                for name in &m.names {
                    add_name.execute(params![n, name])?;
                }
                if m.fixed {
                    set_static.execute(params![n])?;
                } else {
                    clear_static.execute(params![n])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One row of `mappings_view` for an address, as text columns; for tests and tools.
    pub fn view_row(&self, v4: Ipv4Addr) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT ipv4, ipv6, coalesce(names, ''), direction, created, last_used, expires,
                        CAST(pins AS TEXT)
                 FROM mappings_view WHERE ipv4 = ?1",
                params![v4.to_string()],
                |r| (0..8).map(|i| r.get::<_, String>(i)).collect(),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(v4: [u8; 4], v6: &str, names: &[&str]) -> Mapping {
        Mapping {
            v4: Ipv4Addr::from(v4),
            v6: v6.parse().unwrap(),
            direction: Direction::Synthesised,
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            created: UnixMillis(1_700_000_000_000),
            last_used: UnixMillis(1_700_000_001_500),
            expires: UnixMillis(1_700_000_600_000),
            pins: 2,
            fixed: false,
        }
    }

    #[test]
    fn migrates_once_and_records_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite3");
        let s = Store::open(&path, Durability::ProcessCrash).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        drop(s);
        let s = Store::open(&path, Durability::PowerLoss).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite3");
        let s = Store::open(&path, Durability::ProcessCrash).unwrap();
        s.conn
            .execute("INSERT INTO schema_version (version) VALUES (99)", [])
            .unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path, Durability::ProcessCrash),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn round_trips_and_shows_a_readable_view() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite3");
        let mut s = Store::open(&path, Durability::ProcessCrash).unwrap();
        let a = mapping(
            [10, 170, 160, 2],
            "2001:db8:0:0::1",
            &["v6only.test.", "alias.test."],
        );
        s.write_batch(std::slice::from_ref(&a), &[]).unwrap();
        drop(s);
        let s = Store::open(&path, Durability::ProcessCrash).unwrap();
        assert_eq!(s.load_all().unwrap(), vec![a]);
        let row = s.view_row(Ipv4Addr::new(10, 170, 160, 2)).unwrap().unwrap();
        assert_eq!(
            row,
            vec![
                "10.170.160.2",
                "2001:db8::1",
                "v6only.test. alias.test.",
                "synthesised",
                "2023-11-14 22:13:20.000",
                "2023-11-14 22:13:21.500",
                "2023-11-14 22:23:20.000",
                "2",
            ]
        );
    }

    /// A static mapping round-trips and the view says so; turned dynamic again, its marker
    /// goes. A database of step 1 (with a mapping and its names) moves to step 2 intact.
    #[test]
    fn static_mappings_round_trip_and_step_1_databases_migrate_intact() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("v1.sqlite3");
        {
            let c = Connection::open(&old).unwrap();
            c.execute_batch(MIGRATIONS[0].1).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT);
                 INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO mappings VALUES (178954242, '2001:db8::1', 'synthesised', 1, 2, 3, 0);
                 INSERT INTO mapping_names (ipv4, name) VALUES (178954242, 'kept.test.');",
            )
            .unwrap();
        }
        let mut s = Store::open(&old, Durability::ProcessCrash).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        let rows = s.load_all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].names, ["kept.test."]);
        assert!(!rows[0].fixed);

        let fixed = Mapping {
            fixed: true,
            ..mapping([10, 170, 175, 10], "2001:db8::10", &["db.example."])
        };
        s.write_batch(std::slice::from_ref(&fixed), &[]).unwrap();
        let row = s
            .view_row(Ipv4Addr::new(10, 170, 175, 10))
            .unwrap()
            .unwrap();
        assert_eq!(row[3], "static");
        assert!(s.load_all().unwrap().contains(&fixed));
        let dynamic = Mapping {
            fixed: false,
            ..fixed.clone()
        };
        s.write_batch(std::slice::from_ref(&dynamic), &[]).unwrap();
        let row = s
            .view_row(Ipv4Addr::new(10, 170, 175, 10))
            .unwrap()
            .unwrap();
        assert_eq!(row[3], "synthesised");
        // Deleting the mapping takes its marker along.
        s.write_batch(&[], &[fixed.v4]).unwrap();
        let markers: i64 = s
            .conn
            .query_row("SELECT count(*) FROM static_mappings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(markers, 0);
    }

    #[test]
    fn recycling_replaces_the_row_and_moving_an_ipv6_clears_its_old_row() {
        let mut s = Store::open_in_memory().unwrap();
        s.write_batch(&[mapping([10, 170, 160, 2], "2001:db8::1", &["a."])], &[])
            .unwrap();
        // The same dummy now stands for another address.
        s.write_batch(&[mapping([10, 170, 160, 2], "2001:db8::2", &["b."])], &[])
            .unwrap();
        // 2001:db8::2 moves to another dummy (its old one was flushed and reused).
        s.write_batch(&[mapping([10, 170, 160, 3], "2001:db8::2", &[])], &[])
            .unwrap();
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].v4, Ipv4Addr::new(10, 170, 160, 3));
        s.write_batch(&[], &[Ipv4Addr::new(10, 170, 160, 3)])
            .unwrap();
        assert!(s.load_all().unwrap().is_empty());
    }

    #[test]
    fn touches_update_only_use_expiry_and_pins() {
        let mut s = Store::open_in_memory().unwrap();
        let a = mapping([10, 170, 160, 2], "2001:db8::2", &["a.", "b."]);
        s.write_batch(std::slice::from_ref(&a), &[]).unwrap();
        let t = Touch {
            v4: a.v4,
            last_used: UnixMillis(1_700_000_009_000),
            expires: UnixMillis(1_700_000_900_000),
            pins: 0,
        };
        s.write_changes(&[], &[t], &[]).unwrap();
        let row = &s.load_all().unwrap()[0];
        assert_eq!(
            (row.last_used, row.expires, row.pins),
            (t.last_used, t.expires, 0)
        );
        assert_eq!((row.created, &row.names), (a.created, &a.names));
    }

    #[test]
    fn pins_are_reset_at_start() {
        let mut s = Store::open_in_memory().unwrap();
        let mut unpinned = mapping([10, 170, 160, 3], "2001:db8::3", &[]);
        unpinned.pins = 0;
        s.write_batch(
            &[mapping([10, 170, 160, 2], "2001:db8::2", &["a."]), unpinned],
            &[],
        )
        .unwrap();
        assert_eq!(s.reset_pins().unwrap(), 1);
        assert!(s.load_all().unwrap().iter().all(|m| m.pins == 0));
        assert_eq!(s.reset_pins().unwrap(), 0);
    }

    #[test]
    fn large_batches_go_through_one_transaction() {
        // Not a timing assertion (benches are not tests): it checks that a large batch works
        // through the prepared statements in one transaction.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.sqlite3"), Durability::ProcessCrash).unwrap();
        let batch: Vec<Mapping> = (0..2000u32)
            .map(|i| {
                let mut m = mapping([0, 0, 0, 0], "::", &["n."]);
                m.v4 = Ipv4Addr::from(0x0aaa_a000 + i);
                m.v6 = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i));
                m
            })
            .collect();
        s.write_batch(&batch, &[]).unwrap();
        assert_eq!(s.load_all().unwrap().len(), 2000);
    }
}
