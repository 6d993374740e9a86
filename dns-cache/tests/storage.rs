//! Storage faults under a running outsock-dns-cache (issue #15): the database's file system
//! fills up, goes read-only (an ext4 error remounts it so, as a failing disk does), another
//! process holds the write lock (a sqlite3 shell in a write transaction), and a damaged file is
//! found at start. For each fault that strikes a running daemon: one clear log line and the
//! `outsock_dns_db_*` metrics, a name never answered before is SERVFAIL (never an uncommitted
//! dummy), a name answered before keeps its dummy, and once the fault clears the daemon
//! recovers without a restart and the new mapping is in the file. A damaged file at start stops
//! start-up with a message naming it, and is left byte for byte as it was.
//!
//! Real file systems (tmpfs, an ext4 image on a loop device) mounted by the test, the real
//! daemon in its test world, dig and sqlite3 as an operator would use them. Needs root.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testworld::{addr, skip_unless_root, zone, World};

mod common;
use common::*;

/// How long a SERVFAIL for an uncommitted mapping may take (the daemon waits at most 3 s for
/// a commit, less once it knows writes fail; dig's own timeout is 5 s).
const SERVFAIL_WITHIN: Duration = Duration::from_millis(4_500);

fn sh(cmd: &str) -> std::process::Output {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A file system mounted for the test, lazily unmounted when dropped; then the world's folder
/// (which the world could not remove while this was mounted in it) is removed, if given.
struct Mounted(PathBuf, Option<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        if let Some(dir) = &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// dns-cache in a fresh world with its database at `dir`/m.sqlite3 and its log captured.
fn cache_at(world: World, dir: &Path) -> Cache {
    let mut c = Cache::prepare(
        world,
        &format!("[{}]:53", addr::DNS),
        "",
        Vec::new(),
        dir.join("m.sqlite3"),
    );
    c.log = Some(c.world.path("dns-cache.log"));
    c.env.push((
        "RUST_LOG".into(),
        "outsock_dns_cache::persist=info,warn".into(),
    ));
    c.launch();
    c
}

fn log_of(c: &Cache) -> String {
    std::fs::read_to_string(c.log.as_ref().unwrap()).unwrap_or_default()
}

/// The value of one metric line (name with labels), 0 when absent.
fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn failing_fault(body: &str) -> Option<String> {
    body.lines()
        .filter(|l| l.starts_with("outsock_dns_db_writes_failing{") && l.ends_with(" 1"))
        .find_map(|l| l.split('"').nth(1).map(str::to_owned))
}

/// The IPv6 address the database file maps `v4` to (sqlite3, as an operator reads it).
fn stored(db: &Path, v4: Ipv4Addr) -> String {
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(db)
        .arg(format!(
            "select ipv6 from mappings_view where ipv4 = '{v4}'"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// While the fault holds: a fresh name is SERVFAIL soon, the old name keeps its dummy, the
/// metrics say which fault, and the log says so once. Returns the fault's label.
fn check_during_fault(c: &Cache, old: Ipv4Addr, fresh: &str) -> String {
    let t = Instant::now();
    let out = c.dig(&[fresh, "A"]);
    assert_eq!(
        status(&out),
        "SERVFAIL",
        "a new mapping that cannot be committed: {out}"
    );
    assert!(
        t.elapsed() < SERVFAIL_WITHIN,
        "SERVFAIL took {:?}",
        t.elapsed()
    );
    // A second try is refused too, and quickly now that the writer knows.
    let t = Instant::now();
    assert_eq!(status(&c.dig(&[fresh, "A"])), "SERVFAIL");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "second SERVFAIL took {:?}",
        t.elapsed()
    );
    assert_eq!(
        c.a(zone::V6ONLY),
        vec![old],
        "a committed mapping keeps answering"
    );
    let body = metrics(c);
    assert!(failing_fault(&body).is_some(), "no failing gauge: {body}");
    assert!(
        metric(&body, "outsock_dns_db_uncommitted_refused_total") >= 2,
        "{body}"
    );
    let log = log_of(c);
    assert_eq!(
        log.matches("cannot write the mapping database").count(),
        1,
        "one line when writes start failing: {log}"
    );
    // The line names the kind of fault, which the metrics count.
    let fault = log
        .lines()
        .find(|l| l.contains("cannot write the mapping database"))
        .and_then(|l| l.split("fault=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the line names no fault: {log}"))
        .to_owned();
    assert!(
        metric(
            &body,
            &format!("outsock_dns_db_write_failures_total{{fault=\"{fault}\"}}")
        ) > 0,
        "{body}"
    );
    fault
}

/// After the fault cleared: the fresh name is answered (without a restart), its mapping is in
/// the file, the old one too, and the metrics and the log say writes recovered.
fn check_recovered(c: &Cache, old: Ipv4Addr, fresh: &str) {
    let mut got = Vec::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            got = c.a(fresh);
            !got.is_empty()
        }),
        "the fresh name is answered once the fault clears; log: {}",
        log_of(c)
    );
    assert!(c.daemon.is_some(), "no restart");
    let v6 = resolve(c, got[0]);
    assert_eq!(
        stored(&c.db, got[0]),
        v6.to_string(),
        "committed in the file"
    );
    assert_eq!(
        stored(&c.db, old),
        addr::HTTP.to_string(),
        "the old mapping kept"
    );
    let body = metrics(c);
    assert_eq!(failing_fault(&body), None, "{body}");
    assert!(log_of(c).contains("writes recovered"), "{}", log_of(c));
}

#[test]
fn a_full_file_system_refuses_new_mappings_until_space_is_freed() {
    if !skip_unless_root("a_full_file_system_refuses_new_mappings_until_space_is_freed") {
        return;
    }
    let world = World::start("dbfull").expect("world");
    let dir = world.path("dbfs");
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=2m outsock-test {}",
        dir.display()
    ));
    let _mount = Mounted(dir.clone(), Some(world.dir().to_path_buf()));
    let c = cache_at(world, &dir);
    let old = c.a(zone::V6ONLY)[0];

    // Fill the file system to the last byte.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut small = chunk.as_slice();
    loop {
        match f.write(small) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && small.len() > 1 => {
                small = &small[..small.len() / 2];
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    drop(f);

    let fault = check_during_fault(&c, old, zone::ECHO);
    assert_eq!(fault, "disk_full");
    std::fs::remove_file(&filler).unwrap();
    check_recovered(&c, old, zone::ECHO);
}

#[test]
fn a_file_system_gone_read_only_is_survived_and_a_remount_recovers() {
    if !skip_unless_root("a_file_system_gone_read_only_is_survived_and_a_remount_recovers") {
        return;
    }
    let world = World::start("dbro").expect("world");
    let img = world.path("db.ext4");
    // The daemon runs in a mount namespace of its own (`ip netns exec` copies the mounts), so
    // the operator's umount and mount must propagate into it: a shared mount above the
    // database's, as / is on a systemd host.
    let above = world.path("dbroot");
    std::fs::create_dir_all(&above).unwrap();
    sh(&format!(
        "mount --bind {0} {0} && mount --make-shared {0}",
        above.display()
    ));
    let _above = Mounted(above.clone(), Some(world.dir().to_path_buf()));
    let dir = above.join("dbfs");
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!(
        "truncate -s 16M {0} && mkfs.ext4 -q -F {0}",
        img.display()
    ));
    let mount = format!(
        "mount -o loop,errors=remount-ro {} {}",
        img.display(),
        dir.display()
    );
    sh(&mount);
    let _mount = Mounted(dir.clone(), None);
    let c = cache_at(world, &dir);
    let old = c.a(zone::V6ONLY)[0];
    // What was committed is on the disk before the disk fails.
    sh("sync");
    let dev =
        String::from_utf8(sh(&format!("findmnt -n -o SOURCE {}", dir.display())).stdout).unwrap();
    let dev = dev.trim().rsplit('/').next().unwrap().to_owned();
    // ext4's own error path: the file system is remounted read-only under the daemon.
    sh(&format!(
        "echo outsock-test > /sys/fs/ext4/{dev}/trigger_fs_error"
    ));
    assert!(
        std::fs::write(dir.join("probe"), b"x").is_err(),
        "the file system is read-only now"
    );

    let fault = check_during_fault(&c, old, zone::ECHO);
    assert!(
        fault == "read_only" || fault == "io_error",
        "a read-only file system shows as {fault}"
    );
    // dns-cache lets go of the file system, so the operator can repair it: a plain umount
    // (no lazy detach) works, then a check and a mount at the same path.
    let pid = c.daemon.as_ref().unwrap().pid();
    let holds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .any(|target| target.starts_with(&dir))
    };
    assert!(
        eventually(Duration::from_secs(10), || !holds()),
        "dns-cache still holds files on the failed file system"
    );
    sh(&format!("umount {}", dir.display()));
    let fsck = Command::new("e2fsck")
        .arg("-fy")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.code().is_some_and(|c| c <= 1),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    sh(&mount);
    check_recovered(&c, old, zone::ECHO);
    let body = metrics(&c);
    assert!(metric(&body, "outsock_dns_db_reopens_total") >= 1, "{body}");
}

#[test]
fn a_write_lock_held_by_another_process_delays_only_new_mappings() {
    if !skip_unless_root("a_write_lock_held_by_another_process_delays_only_new_mappings") {
        return;
    }
    let world = World::start("dblock").expect("world");
    let dir = world.dir().to_path_buf();
    let c = cache_at(world, &dir);
    let old = c.a(zone::V6ONLY)[0];

    // An operator's sqlite3 shell in a write transaction.
    let mut shell = Command::new("sqlite3")
        .arg(&c.db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = shell.stdin.take().unwrap();
    input
        .write_all(b"BEGIN IMMEDIATE;\nSELECT 'holding';\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "holding", "the shell holds the write lock");

    let fault = check_during_fault(&c, old, zone::ECHO);
    assert_eq!(fault, "locked");
    input.write_all(b"ROLLBACK;\n.quit\n").unwrap();
    drop(input);
    assert!(shell.wait().unwrap().success());
    check_recovered(&c, old, zone::ECHO);
}

/// Starts dns-cache on `c`'s settings and expects it to refuse the database, naming it, and to
/// leave the file as it was (`bytes`).
fn refused_start(c: &Cache, bytes: &[u8]) {
    let out = c
        .world
        .host()
        .command(env!("CARGO_BIN_EXE_outsock-dns-cache"))
        .arg("--config")
        .arg(&c.config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "dns-cache started on a damaged database"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&c.db.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("not an intact mapping database"), "{err}");
    assert_eq!(std::fs::read(&c.db).unwrap(), bytes, "left untouched");
}

#[test]
fn a_damaged_database_stops_start_up_naming_the_file_and_is_left_as_it_was() {
    if !skip_unless_root("a_damaged_database_stops_start_up_naming_the_file_and_is_left_as_it_was")
    {
        return;
    }
    let world = World::start("dbbad").expect("world");
    let dir = world.dir().to_path_buf();
    let mut c = Cache::prepare(
        world,
        &format!("[{}]:53", addr::DNS),
        "",
        Vec::new(),
        dir.join("m.sqlite3"),
    );

    // Not a database at all.
    let garbage: Vec<u8> = b"this is not a database. ".repeat(400);
    std::fs::write(&c.db, &garbage).unwrap();
    refused_start(&c, &garbage);

    // A real database with mappings, then a damaged page.
    std::fs::remove_file(&c.db).unwrap();
    c.launch();
    let old = c.a(zone::V6ONLY)[0];
    assert_eq!(stored(&c.db, old), addr::HTTP.to_string());
    // A clean stop folds the WAL into the file.
    let status = c.daemon.take().unwrap().stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut bytes = std::fs::read(&c.db).unwrap();
    assert!(bytes.len() >= 3 * 4096, "{} bytes", bytes.len());
    for b in &mut bytes[4096 + 8..4096 + 400] {
        *b = 0xa5;
    }
    std::fs::write(&c.db, &bytes).unwrap();
    refused_start(&c, &bytes);
}
