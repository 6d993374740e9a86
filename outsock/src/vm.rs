//! `outsock vm run` and `outsock vm ls`: one program in a fresh VM, and the VMs host-server
//! knows.
//!
//! `vm run` finds the guest image (`--kernel`/`--initramfs`, or `guest/image/build.sh`, which
//! builds it once and caches it), starts `outsock-vmm` against the running daemons with the
//! command on the guest's kernel command line, forwards this terminal's input to the guest
//! console (the VMM reads stdin itself) and the console's output to stdout as it arrives —
//! without the guest `/init`'s `OUTSOCK-INIT:` lines and with kernel messages (`[    1.234]
//! …`) on stderr — and exits with the command's status: 125 when the VM ended without running
//! it, the VMM's own status when it failed to start.
//!
//! `vm ls` asks host-server over host.sock ([`ToHost::ListVms`]; root or host-server's own
//! user): every configured VM, whether a VMM answers on its socket now, its pid, its guest's
//! CID and the sockets and listeners it holds.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shared_proto::outsource::{VmList, VmStatus};
use shared_proto::{decode, to_vec, ToGuest, ToHost};

/// `vm run`'s settings (see `Cmd::Vm` in main.rs for their flags).
#[derive(Debug)]
pub struct RunArgs {
    pub name: String,
    pub host_socket: PathBuf,
    pub vsock_socket: Option<PathBuf>,
    pub cid: u32,
    pub mem_mib: u32,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub vmm: Option<PathBuf>,
    pub metrics_socket: Option<PathBuf>,
    pub command: Vec<String>,
}

/// The exit status when the VM ended without running the command.
pub const NOT_RUN: i32 = 125;

/// Where this executable lives (the cargo target folder, or an installed bin directory).
fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The guest kernel and initramfs: as given, or from `guest/image/build.sh` (the repository's,
/// next to a cargo target folder, or `$OUTSOCK_IMAGE_BUILD`), which prints `kernel=` and
/// `initramfs=` lines.
fn image(args: &RunArgs) -> Result<(PathBuf, PathBuf)> {
    if let (Some(k), Some(i)) = (&args.kernel, &args.initramfs) {
        return Ok((k.clone(), i.clone()));
    }
    if args.kernel.is_some() || args.initramfs.is_some() {
        bail!("give both --kernel and --initramfs, or neither (the image is then built)");
    }
    let dir = exe_dir()?;
    let script = std::env::var_os("OUTSOCK_IMAGE_BUILD")
        .map_or_else(|| dir.join("../../guest/image/build.sh"), PathBuf::from);
    if !script.is_file() {
        bail!(
            "no guest image: give --kernel and --initramfs, or set OUTSOCK_IMAGE_BUILD to guest/image/build.sh (not found at {})",
            script.display()
        );
    }
    let mut cmd = Command::new(&script);
    cmd.arg("--quiet").stderr(Stdio::inherit());
    if std::env::var_os("OUTSOCK_GUEST_BINS").is_none() {
        cmd.env("OUTSOCK_GUEST_BINS", &dir);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .with_context(|| format!("{} printed no {key} line", script.display()))
    };
    Ok((field("kernel=")?, field("initramfs=")?))
}

/// outsock-vmm: `--vmm`, `$OUTSOCK_VMM`, or next to this executable (or in the release folder
/// beside a debug one).
fn vmm_binary(args: &RunArgs) -> Result<PathBuf> {
    if let Some(v) = &args.vmm {
        return Ok(v.clone());
    }
    let dir = exe_dir()?;
    [dir.join("outsock-vmm"), dir.join("../release/outsock-vmm")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no outsock-vmm next to {}: give --vmm or set OUTSOCK_VMM",
                dir.display()
            )
        })
}

/// What one console line is.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// The program's output: to stdout.
    Program(&'a [u8]),
    /// A kernel message: to stderr.
    Kernel(&'a [u8]),
    /// `/init`'s report; `Some` with the command's status for `exit=N`.
    Init(Option<i32>),
}

const INIT: &[u8] = b"OUTSOCK-INIT:";

/// Sorts one console line (without its newline; carriage returns already gone).
fn classify(line: &[u8]) -> Line<'_> {
    if let Some(rest) = line.strip_prefix(INIT) {
        let rest = String::from_utf8_lossy(rest);
        let status = rest
            .trim()
            .strip_prefix("exit=")
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok());
        return Line::Init(status);
    }
    if is_kernel(line) {
        Line::Kernel(line)
    } else {
        Line::Program(line)
    }
}

/// `[ 12.345678] …`, the printk time stamp.
fn is_kernel(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"[") else {
        return false;
    };
    let Some(end) = rest.iter().position(|&b| b == b']') else {
        return false;
    };
    let stamp = &rest[..end];
    let digits = stamp.trim_ascii();
    !digits.is_empty()
        && digits.iter().all(|b| b.is_ascii_digit() || *b == b'.')
        && digits.contains(&b'.')
}

/// Whether `partial` (a line not ended yet) could still become a line that is not the
/// program's, so it must wait for its end; anything else goes out at once (prompts).
fn undecided(partial: &[u8]) -> bool {
    let n = partial.len().min(INIT.len());
    partial[..n] == INIT[..n] || partial.first() == Some(&b'[')
}

/// Copies the console from `from` to `out` and `err` as it arrives (see the module docs);
/// returns the status `/init` reported.
fn filter_console(from: impl Read, out: &mut impl Write, err: &mut impl Write) -> Option<i32> {
    let mut from = BufReader::new(from);
    let mut status = None;
    // The current line's bytes not written yet; `started`: some of it was already written.
    let mut line: Vec<u8> = Vec::new();
    let mut started = false;
    loop {
        let chunk = match from.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(c) => c.to_vec(),
        };
        from.consume(chunk.len());
        for b in chunk {
            match b {
                b'\r' => {}
                b'\n' => {
                    if started {
                        let _ = out.write_all(&line);
                        let _ = out.write_all(b"\n");
                    } else {
                        match classify(&line) {
                            Line::Program(l) => {
                                let _ = out.write_all(l);
                                let _ = out.write_all(b"\n");
                            }
                            Line::Kernel(l) => {
                                let _ = err.write_all(l);
                                let _ = err.write_all(b"\n");
                            }
                            Line::Init(s) => status = s.or(status),
                        }
                    }
                    line.clear();
                    started = false;
                }
                b => line.push(b),
            }
        }
        // A line still open that can only be the program's (a prompt) goes out now.
        if !line.is_empty() && (started || !undecided(&line)) {
            let _ = out.write_all(&line);
            line.clear();
            started = true;
        }
        let _ = out.flush();
        let _ = err.flush();
    }
    if !line.is_empty() {
        let _ = out.write_all(&line);
        let _ = out.flush();
    }
    status
}

/// `outsock vm run`: returns the exit status (see the module docs).
pub fn run(args: &RunArgs) -> Result<i32> {
    let (kernel, initramfs) = image(args)?;
    let vmm = vmm_binary(args)?;
    let vsock = match &args.vsock_socket {
        Some(p) => p.clone(),
        None => vsock_socket(&args.host_socket, &args.name),
    };
    let mut cmd = Command::new(&vmm);
    if let Some(m) = &args.metrics_socket {
        cmd.arg("--metrics-socket").arg(m);
    }
    let mut child = cmd
        .arg("--name")
        .arg(&args.name)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .args(["--mem-mib", &args.mem_mib.to_string()])
        .arg("--host-socket")
        .arg(&args.host_socket)
        .arg("--vsock-socket")
        .arg(&vsock)
        .args(["--cid", &args.cid.to_string()])
        .arg("--extra-cmdline")
        .arg(format!("-- \"{}\"", args.command.join(" ")))
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", vmm.display()))?;
    let console = child.stdout.take().context("no console pipe")?;
    let status = filter_console(console, &mut std::io::stdout(), &mut std::io::stderr());
    let vmm_status = child.wait().context("waiting for outsock-vmm")?;
    Ok(match status {
        Some(s) => s,
        None => {
            eprintln!("outsock vm run: the VM ended ({vmm_status}) without running the command");
            NOT_RUN
        }
    })
}

/// The VM's socket as host-server has it configured (`[vms.NAME] socket`), when host-server
/// tells (root, host-server's user); else outsock-vmm's default, /run/outsock/vm-NAME.vsock.
fn vsock_socket(host_socket: &Path, name: &str) -> PathBuf {
    list(host_socket)
        .ok()
        .and_then(|vms| vms.into_iter().find(|v| v.name == name))
        .map_or_else(
            || PathBuf::from(format!("/run/outsock/vm-{name}.vsock")),
            |v| PathBuf::from(v.socket),
        )
}

/// Asks host-server for its VMs.
fn list(socket: &Path) -> Result<Vec<VmStatus>> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to host-server at {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&to_vec(&ToHost::ListVms)?)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .context("reading host-server's answer")?;
    if let Ok(Some((ToGuest::Failed(errno), _))) = decode::<ToGuest>(&buf) {
        bail!("host-server refused the list ({errno}): only root and host-server's user may ask");
    }
    match decode::<VmList>(&buf) {
        Ok(Some((list, _))) => Ok(list.0),
        Ok(None) => bail!("host-server closed the stream without a list (an older host-server?)"),
        Err(e) => bail!("host-server's answer: {e}"),
    }
}

/// `outsock vm ls`: a table, or one JSON object per VM.
pub fn ls(socket: &Path, json: bool) -> Result<()> {
    let vms = list(socket)?;
    if json {
        for v in &vms {
            println!(
                "{{\"name\":{},\"running\":{},\"vmm_pid\":{},\"cid\":{},\"address\":\"{}\",\"socket\":{},\"sockets\":{},\"listeners\":{}}}",
                crate::json::json_str(&v.name),
                v.running,
                v.vmm_pid,
                v.cid,
                v.address,
                crate::json::json_str(&v.socket),
                v.sockets,
                v.listeners
            );
        }
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:>8} {:>5} {:<28} {:>7} {:>9}  SOCKET",
        "NAME", "STATE", "PID", "CID", "ADDRESS", "SOCKETS", "LISTENERS"
    );
    for v in &vms {
        let dash = |n: u32| {
            if n == 0 {
                "-".to_owned()
            } else {
                n.to_string()
            }
        };
        println!(
            "{:<16} {:<8} {:>8} {:>5} {:<28} {:>7} {:>9}  {}",
            v.name,
            if v.running { "running" } else { "stopped" },
            dash(v.vmm_pid),
            dash(v.cid),
            v.address.to_string(),
            v.sockets,
            v.listeners,
            v.socket
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_console_lines() {
        assert_eq!(classify(b"OUTSOCK-INIT: exit=3"), Line::Init(Some(3)));
        assert_eq!(
            classify(b"OUTSOCK-INIT: exit=0 (pid 12)"),
            Line::Init(Some(0))
        );
        assert_eq!(classify(b"OUTSOCK-INIT: supervisor on"), Line::Init(None));
        assert_eq!(
            classify(b"[    1.234567] virtio: hello"),
            Line::Kernel(b"[    1.234567] virtio: hello")
        );
        assert_eq!(
            classify(b"[x] not a stamp"),
            Line::Program(b"[x] not a stamp")
        );
        assert_eq!(classify(b"[1] no dot"), Line::Program(b"[1] no dot"));
        assert_eq!(classify(b"hello"), Line::Program(b"hello"));
    }

    #[test]
    fn filters_a_console_stream() {
        let console =
            b"[    0.5] boot\r\nOUTSOCK-INIT: supervisor on\r\n<html>page</html>\r\nprompt> "
                .to_vec();
        let mut text = console;
        text.extend_from_slice(
            b"typed\r\nOUTSOCK-INIT: exit=7\r\n[    2.0] reboot: Power down\r\n",
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = filter_console(&text[..], &mut out, &mut err);
        assert_eq!(status, Some(7));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<html>page</html>\nprompt> typed\n"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "[    0.5] boot\n[    2.0] reboot: Power down\n"
        );
        // No report: no status.
        let mut out = Vec::new();
        assert_eq!(
            filter_console(&b"only output\n"[..], &mut out, &mut Vec::new()),
            None
        );
        assert_eq!(out, b"only output\n");
    }
}
