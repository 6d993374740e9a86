//! systemd's side of the notification protocol, for the lab tests: a datagram socket standing
//! in for `$NOTIFY_SOCKET` that records what outsock-vmm sends (`READY=1`, `WATCHDOG=1`,
//! `STOPPING=1`) with the time it arrived, and the `sd-notify` check over such a record.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A recording notification socket; stops and removes itself on drop.
pub struct Notify {
    path: PathBuf,
    events: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Notify {
    /// Binds `path`. With `probe`, every `READY=1` is followed at once by a connect to that
    /// Unix socket, recorded as `probe: accepting` or `probe: refused (…)`: the VM's vsock
    /// socket must listen by the time the VMM says it is ready.
    pub fn bind(path: PathBuf, probe: Option<PathBuf>) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, st) = (Arc::clone(&events), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                let ready = text.lines().any(|l| l == "READY=1");
                ev.lock().expect("lock").push((Instant::now(), text));
                if let (true, Some(p)) = (ready, probe.as_deref()) {
                    let what = match UnixStream::connect(p) {
                        Ok(_) => "probe: accepting".to_owned(),
                        Err(e) => format!("probe: refused ({e})"),
                    };
                    ev.lock().expect("lock").push((Instant::now(), what));
                }
            }
        });
        Ok(Self {
            path,
            events,
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What arrived since `t0`, timed from it.
    pub fn events_since(&self, t0: Instant) -> Vec<(Duration, String)> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _)| *t >= t0)
            .map(|(t, s)| (t.duration_since(t0), s.clone()))
            .collect()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The watchdog timeout the `sd-notify` run gives the VMM (`WATCHDOG_USEC`): keep-alives every
/// 2 s, and none may be more than 4 s apart.
pub const WATCHDOG_USEC: u64 = 4_000_000;

/// Judges the notifications of a run that booted `boots` times (restart in place) and was
/// then stopped with SIGTERM: one `READY=1` per boot, the first before /init started
/// (`init_at`); keep-alives never further apart than the watchdog timeout; `STOPPING=1` once,
/// after everything but keep-alives. Returns (ok, detail).
pub fn judge(
    events: &[(Duration, String)],
    boots: usize,
    init_at: Option<Duration>,
    run_len: Duration,
) -> (bool, String) {
    let times = |what: &str| -> Vec<Duration> {
        events
            .iter()
            .filter(|(_, s)| s.lines().any(|l| l == what))
            .map(|(t, _)| *t)
            .collect()
    };
    let ready = times("READY=1");
    let dogs = times("WATCHDOG=1");
    let stopping = times("STOPPING=1");
    let limit = Duration::from_micros(WATCHDOG_USEC);
    // Gaps between keep-alives, and from the start and to the end of the run.
    let mut marks = vec![Duration::ZERO];
    marks.extend(&dogs);
    marks.push(run_len.min(stopping.first().copied().unwrap_or(run_len)));
    let max_gap = marks
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or_default();
    let ready_first = match (ready.first(), init_at) {
        (Some(r), Some(i)) => *r < i,
        _ => false,
    };
    // Keep-alives may go on while the VMM winds down; nothing else may follow STOPPING=1.
    let stopping_last = stopping.len() == 1
        && events
            .iter()
            .rev()
            .find(|(_, s)| !s.lines().any(|l| l == "WATCHDOG=1"))
            .is_some_and(|(_, s)| s.lines().any(|l| l == "STOPPING=1"));
    let ok =
        ready.len() == boots && ready_first && !dogs.is_empty() && max_gap < limit && stopping_last;
    let detail = format!(
        "READY=1 x{} (want {boots}; first at {} ms, /init at {} ms), WATCHDOG=1 x{} (largest gap {} ms, limit {} ms), STOPPING=1 x{}{}",
        ready.len(),
        ready.first().map_or(0, Duration::as_millis),
        init_at.map_or(0, |t| t.as_millis()),
        dogs.len(),
        max_gap.as_millis(),
        limit.as_millis(),
        stopping.len(),
        if stopping_last { " (last)" } else { " (not last)" },
    );
    (ok, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(list: &[(u64, &str)]) -> Vec<(Duration, String)> {
        list.iter()
            .map(|(ms, s)| (Duration::from_millis(*ms), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn a_good_record_passes_and_gaps_fail() {
        let good = ev(&[
            (0, "WATCHDOG=1"),
            (5, "READY=1"),
            (2000, "WATCHDOG=1"),
            (3000, "READY=1"),
            (3001, "WATCHDOG=1"),
            (5000, "WATCHDOG=1"),
            (5500, "STOPPING=1"),
        ]);
        let init = Some(Duration::from_millis(1000));
        let len = Duration::from_millis(5600);
        assert!(judge(&good, 2, init, len).0);
        assert!(!judge(&good, 1, init, len).0, "READY count");
        let gap = ev(&[(5, "READY=1"), (100, "WATCHDOG=1"), (4200, "STOPPING=1")]);
        assert!(!judge(&gap, 1, init, Duration::from_millis(4300)).0);
        let mut dog_after = good.clone();
        dog_after.push((Duration::from_millis(5550), "WATCHDOG=1".to_owned()));
        assert!(
            judge(&dog_after, 2, init, len).0,
            "keep-alives while stopping"
        );
        let mut ready_after = good.clone();
        ready_after.push((Duration::from_millis(5550), "READY=1".to_owned()));
        assert!(!judge(&ready_after, 2, init, len).0);
        let late_ready = ev(&[(0, "WATCHDOG=1"), (1500, "READY=1"), (1600, "STOPPING=1")]);
        assert!(!judge(&late_ready, 1, init, Duration::from_millis(1700)).0);
    }
}
