//! The VM-mode end-to-end test (group `vm`): the test world's dns-cache and host-server
//! (testworld's `Stack`, in the world's `host` namespace) with a `[vms.vm0]` table, and one
//! guest booted by outsock-vmm with a vsock device bridged to that host-server.
//!
//! The guest fetches its test script from the world's HTTP server (so the script is not
//! bound by the 2 KiB kernel command line) and runs, unmodified: outbound clients by name
//! (curl, wget, busybox wget, busybox-static wget and a CGO_ENABLED=0 Go client through /init's
//! seccomp supervisor, netcat over TCP and UDP, kdig over UDP and TCP, BIND's dig at the
//! guest DNS address and through resolv.conf over UDP and TCP, python3 clients
//! over TCP, asyncio and UDP, a 4 MiB file with its md5, `iperf3 -4` of 100 MiB); C programs
//! compiled by the driver (connects on descriptors above 69,000; `close_range` and `closefrom`
//! over outsourced descriptors whose numbers are then reused); inbound servers (busybox httpd,
//! `nc -l -p`; and, in a second run of the guest after the first, nginx with a master and two
//! workers under 5,000 requests, 64 at a time) reached by IPv6 clients in `world`; and a
//! host-server restart while the VM runs. Each step prints a marker line that is read back from
//! the console; where the driver must act (run the world client, restart host-server) the guest
//! prints a marker and waits for the driver to type `go` on its console.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use testworld::stack::{Stack, GUEST_DNS};
use testworld::{addr, big_file_byte, programs, zone, BIG_FILE_LEN, INDEX_BODY};

use crate::sd_notify::Notify;
use crate::vm_world::{self, IPERF_PORT, WHOAMI_PORT};
use crate::{Driver, Run, RunOpts};

/// The checks this group reports, in order.
pub const NAMES: [&str; 28] = [
    "vm-boot",
    "vm-curl",
    "vm-wget",
    "vm-busybox-wget",
    "vm-static-wget",
    "vm-go-client",
    "vm-go-udp",
    "vm-nc",
    "vm-static-nc",
    "vm-static-mapping",
    "vm-udp",
    "vm-kdig",
    "vm-dig",
    "vm-python3",
    "vm-vsock-buffer",
    "vm-high-fds",
    "vm-big-md5",
    "vm-iperf3",
    "vm-inbound-httpd",
    "vm-inbound-nc",
    "vm-inbound-static-httpd",
    "vm-inbound-static-nc",
    "vm-inbound-go-server",
    "vm-inbound-nginx",
    "vm-inbound-after-kill",
    "vm-udp-server-after-kill",
    "vm-restart",
    "vm-run",
];
const VM_SOCKET: &str = "/tmp/outsock-lab-vm0.vsock";
/// A static mapping of dns-cache's `[static]` (issue #19): the echo server's fixed dummy,
/// which the guest reaches by its IPv4 literal, no name looked up.
const STATIC_DUMMY: &str = "10.170.175.10";
/// The `outsock vm run` VM's metrics socket.
const METRICS_SOCKET: &str = "/tmp/outsock-lab-vm0.metrics";
/// The pages `outsock vm run -- curl` fetches, each on a connection of its own (the server
/// is asked to close each): every connect after the first may go out on the host.sock stream
/// the VMM kept from the one before.
const VM_RUN_FETCHES: usize = 4;
/// The Go client `run` builds from `go-client.go` into the binaries' folder (`--bin-dir`).
const GO_CLIENT: &str = "lab-go-client";
/// What the Go client's socket options print on a native AF_INET TCP socket (checked in a
/// namespace of loopback only): no error; TCP_NODELAY as set (off, after Go's dial set it on),
/// TCP_KEEPIDLE as SetKeepAlivePeriod set it (20 s; an idle socket reads 7200), SO_DOMAIN
/// AF_INET, IP_TOS 0 and IP_TTL 64. A vsock stand-in answering for itself gives ENOPROTOOPT and
/// AF_VSOCK (40): seen in the lab with the supervisor's option notifications turned off.
const GO_SOCKOPTS: &str = "SetNoDelay(false)=<nil> SetKeepAlive(true)=<nil> SetKeepAlivePeriod(20s)=<nil> Control=<nil> TCP_NODELAY=0/<nil> TCP_KEEPIDLE=20/<nil> SO_DOMAIN=2/<nil> TCP_INFO=<nil> IP_TOS=0/<nil> IP_TTL=64/<nil>";
/// Guest ports the inbound checks listen on (host-server's allow-list).
const HTTPD_PORT: u16 = 8080;
const NC_PORT: u16 = 8081;
/// The port busybox-static's httpd listens on under /init's supervisor.
const STATIC_HTTPD_PORT: u16 = 8082;
/// busybox-static's `nc -l` in the guest (dual stack, under the supervisor).
const STATIC_NC_PORT: u16 = 8083;
/// The Go client's tcp4 server mode in the guest (under the supervisor).
const GO_SERVER_PORT: u16 = 8084;
/// python3's UDP echo server in the guest, kept across host-server's kill -9.
const UDP_SERVER_PORT: u16 = 8085;
/// Bytes `iperf3 -4 -n` sends.
const IPERF_BYTES: u64 = 100 * 1024 * 1024;
/// The nginx check's requests from `world`, and how many at a time (issue 13).
const NGINX_REQUESTS: usize = 5_000;
const NGINX_PARALLEL: usize = 64;
/// Requests not started this long after the first count as failed (the load took about 30 s
/// in the lab).
const NGINX_LOAD_LIMIT: Duration = Duration::from_secs(180);
/// The main VM run's limit.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The nginx run's limit (the load's included; the run took about 45 s in the lab).
const NGINX_RUN_LIMIT: Duration = Duration::from_secs(300);
/// What nginx answers every request with.
const NGINX_BODY: &str = "served\n";
/// The guest's nginx: a master and two workers (as root: the guest image has no other user
/// worth switching to), its pid, logs and client body files under /tmp/nginx, each request's
/// peer address, status and worker pid in the access log. The guest script makes
/// /var/lib/nginx, where the build puts its other temporary folders.
const NGINX_CONF: &str = "\
user root;
worker_processes 2;
pid /tmp/nginx/nginx.pid;
error_log /tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
    log_format peers '$remote_addr $status $pid';
    access_log /tmp/nginx/access.log peers;
    client_body_temp_path /tmp/nginx/body;
    server {
        listen 8080;
        location / { return 200 \"served\\n\"; }
    }
}
";

/// The guest's test script. Full program paths: the image's static busybox sh runs its own
/// applets (wget, nc) before anything on PATH. Debian's dynamic busybox is built without
/// FEATURE_WGET_TIMEOUT, and its wget crashes on `-T` (getopt32 stores the number through the
/// NULL it was given for the missing option): `timeout` bounds it instead.
fn guest_script() -> String {
    format!(
        r#"V6={v6}; ECHO={echo}; DNS={dns}
curl -4 -sS -m 30 http://$V6/index.html; echo CURL-RC=$?
/usr/bin/wget -4 -q -T 30 -O - http://$V6/index.html; echo WGET-RC=$?
timeout 30 /usr/local/bin/busybox wget -q -O - http://$V6/index.html; echo BBWGET-RC=$?
timeout 30 /bin/busybox wget -q -O - http://$V6/index.html; echo STATICWGET-RC=$?
curl -4 -sS -m 30 -o /tmp/go-client http://$V6/go-client && chmod 755 /tmp/go-client
timeout 90 /tmp/go-client $V6 $ECHO >/tmp/go.out 2>/tmp/go.err; echo GO-RC=$?
sed 's/^/GO /' /tmp/go.out; sed 's/^/GO-ERR /' /tmp/go.err
echo via-netcat | /usr/bin/nc.traditional -q 3 -w 20 $ECHO 7; echo NC-RC=$?
echo SNC-OUT=$(echo via-static-nc | timeout 20 /bin/busybox nc -w 3 $ECHO 7)
echo via-static-mapping | /usr/bin/nc.traditional -q 3 -w 20 {static_dummy} 7; echo SMAP-RC=$?
echo via-udp | /usr/bin/nc.traditional -u -q 3 -w 10 $ECHO 7; echo NCU-RC=$?
A=$(kdig +short +timeout=5 @$DNS $V6 A); echo KDIG-RC=$? KDIG-UDP=$A
A=$(kdig +short +tcp +timeout=5 @$DNS $ECHO A); echo KDIGTCP-RC=$? KDIG-TCP=$A
A=$(dig +short +time=5 +tries=2 @$DNS $V6 A); echo DIG-AT-RC=$? DIG-AT=$A
A=$(dig +short +tcp +time=5 +tries=2 @$DNS $V6 A); echo DIG-AT-TCP-RC=$? DIG-AT-TCP=$A
A=$(dig +short +time=5 +tries=2 $V6 A); echo DIG-CONF-RC=$? DIG-CONF=$A
A=$(dig +short +tcp +time=5 +tries=2 $V6 A); echo DIG-CONF-TCP-RC=$? DIG-CONF-TCP=$A
curl -4 -sS -m 30 -o /tmp/py-clients.py http://$V6/py-clients.py
python3 /tmp/py-clients.py $ECHO > /tmp/py.out 2>&1; echo PY-RC=$?; sed 's/^/PY /' /tmp/py.out
echo VSOCKBUF=$(python3 -c "import socket,struct,sys;s=socket.create_connection((sys.argv[1],7));print(struct.unpack('Q',s.getsockopt(40,0,8))[0])" $ECHO 2>&1 | tail -1)
echo HIGHFD-START
for p in high_fds close_range; do curl -4 -sS -m 30 -o /tmp/$p http://$V6/$p && chmod 755 /tmp/$p; done
timeout 120 /tmp/high_fds $ECHO >/tmp/hf.out 2>/tmp/hf.err; echo HIGHFD-RC=$?
sed 's/^/HIGHFD /' /tmp/hf.out; sed 's/^/HIGHFD-ERR /' /tmp/hf.err
timeout 60 /tmp/close_range $ECHO >/tmp/cr.out 2>/tmp/cr.err; echo CLOSERANGE-RC=$?
sed 's/^/CLOSERANGE /' /tmp/cr.out; sed 's/^/CLOSERANGE-ERR /' /tmp/cr.err
echo BIG-MD5=$(/usr/bin/wget -4 -q -T 60 -O - http://$V6/big.bin | md5sum)
iperf3 -4 -c $V6 -p {iperf_port} -n {iperf_bytes} -J > /tmp/iperf.json; echo IPERF-RC=$?
awk '/"sum_sent"/ {{ s = 1 }} /"sum_received"/ {{ r = 1 }}
     /"bytes"/ {{ gsub(/[^0-9]/, "", $2)
                 if (s == 1) {{ print "IPERF-SENT=" $2; s = 2 }}
                 else if (r == 1) {{ print "IPERF-RECEIVED=" $2; r = 2 }} }}
     /"error"/ {{ print "IPERF-ERROR " $0 }}' /tmp/iperf.json
/usr/local/bin/busybox httpd -f -vv -p 0.0.0.0:{httpd_port} -h /www 2>/tmp/httpd.log & H=$!
/usr/bin/nc.traditional -n -v -l -p {nc_port} </dev/null >/tmp/nc-in.out 2>/tmp/nc-in.err & N=$!
/bin/busybox httpd -f -vv -p {static_httpd_port} -h /www 2>/tmp/shttpd.log & S=$!
/bin/busybox nc -l -p {static_nc_port} </dev/null >/tmp/snc-in.out 2>/tmp/snc-in.err & SN=$!
/tmp/go-client serve {go_server_port} >/tmp/gosrv.out 2>&1 & G=$!
echo INBOUND-READY
read -t 90 GO; echo INBOUND-GO=$GO
for p in H N S SN G; do eval pid=\$$p; echo "INBOUND-PROC $p $(cat /proc/$pid/comm 2>/dev/null || echo gone) $(grep -s '^State' /proc/$pid/status | tr '\t' ' ') syscall $(cut -d' ' -f1-3 /proc/$pid/syscall 2>/dev/null)"; done
sed 's/^/HTTPD-LOG /' /tmp/httpd.log
echo NC-IN-DATA=$(cat /tmp/nc-in.out)
sed 's/^/NC-IN-LOG /' /tmp/nc-in.err
sed 's/^/SHTTPD-LOG /' /tmp/shttpd.log
echo SNC-IN-DATA=$(cat /tmp/snc-in.out)
sed 's/^/SNC-IN-ERR /' /tmp/snc-in.err
sed 's/^/GOSRV /' /tmp/gosrv.out
kill $H $N $S $SN $G 2>/dev/null; wait $H $N $S $SN $G 2>/dev/null
/bin/busybox httpd -f -p {static_httpd_port} -h /www 2>/tmp/shttpd2.log & S=$!
sleep 3; if kill -0 $S 2>/dev/null; then echo RELISTEN=alive; else echo RELISTEN=gone; sed 's/^/RELISTEN-LOG /' /tmp/shttpd2.log; fi
kill $S 2>/dev/null; wait $S 2>/dev/null
/usr/bin/nc.traditional -n -l -p {nc_port} </dev/null >/tmp/nc-kill.out 2>/tmp/nc-kill.err & K=$!
python3 -c "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',{udp_server_port}));[s.sendto(*s.recvfrom(2048)) for _ in iter(int,1)]" 2>/tmp/udp-kill.err & U=$!
echo KILL-NOW
read -t 120 GO; echo KILL-GO=$GO
sleep 1; echo NC-KILL-DATA=$(cat /tmp/nc-kill.out)
sed 's/^/NC-KILL-ERR /' /tmp/nc-kill.err
if kill -0 $U 2>/dev/null; then echo UDP-KILL=alive; else echo UDP-KILL=gone; fi
sed 's/^/UDP-KILL-ERR /' /tmp/udp-kill.err
kill $K $U 2>/dev/null; wait $K $U 2>/dev/null
for n in $V6 $ECHO {multi}; do kdig +short +timeout=5 @$DNS $n A; done > /tmp/dummies
for d in $(cat /tmp/dummies); do echo BEFORE $d $(/usr/bin/nc.traditional -w 10 $d {whoami} </dev/null); done
echo RESTART-NOW
read -t 120 GO; echo RESTART-GO=$GO
for d in $(cat /tmp/dummies); do echo AFTER $d $(/usr/bin/nc.traditional -w 10 $d {whoami} </dev/null); done
curl -4 -sS -m 30 -o /dev/null http://$V6/index.html; echo CURL-AFTER-RC=$?
A=$(kdig +short +timeout=5 @$DNS $ECHO A); echo KDIG-AFTER-RC=$? KDIG-AFTER=$A
echo E2E-DONE
"#,
        v6 = zone::V6ONLY,
        echo = zone::ECHO,
        static_dummy = STATIC_DUMMY,
        multi = zone::MULTI,
        dns = GUEST_DNS,
        iperf_port = IPERF_PORT,
        iperf_bytes = IPERF_BYTES,
        httpd_port = HTTPD_PORT,
        nc_port = NC_PORT,
        static_httpd_port = STATIC_HTTPD_PORT,
        static_nc_port = STATIC_NC_PORT,
        go_server_port = GO_SERVER_PORT,
        udp_server_port = UDP_SERVER_PORT,
        whoami = WHOAMI_PORT,
    )
}

/// The guest script of the nginx run (a VM of its own, after the main one: see [`nginx_run`]).
fn nginx_script() -> String {
    format!(
        r#"V6={v6}
mkdir -p /tmp/nginx /var/lib/nginx; curl -4 -sS -m 30 -o /tmp/nginx/nginx.conf http://$V6/nginx.conf
/usr/sbin/nginx -p /tmp/nginx -e /tmp/nginx/error.log -c /tmp/nginx/nginx.conf -g 'daemon off;' </dev/null >/tmp/nginx/out 2>&1 & X=$!
workers() {{ grep -l 'nginx: worke[r] process' /proc/[0-9]*/cmdline 2>/dev/null | wc -l; }}
i=0; while [ $i -lt 120 ] && [ $(workers) -lt 2 ]; do sleep 0.5; i=$((i + 1)); done
echo NGINX-PROCESSES master=$(grep -l 'nginx: maste[r] process' /proc/[0-9]*/cmdline 2>/dev/null | wc -l) workers=$(workers)
echo NGINX-READY
read -t 300 GO; echo NGINX-GO=$GO
kill -QUIT $X; wait $X; echo NGINX-EXIT=$?
sed 's/^/NGINX-OUT /' /tmp/nginx/out
awk '{{ print $1, $2 }}' /tmp/nginx/access.log | sort | uniq -c | sed 's/^ */NGINX-ACCESS /'
awk '{{ print $3 }}' /tmp/nginx/access.log | sort | uniq -c | sed 's/^ */NGINX-PID /'
echo NGINX-ACCEPT-ERRORS=$(grep -c 'accept4() failed' /tmp/nginx/error.log)
echo NGINX-BAD-LINES=$(grep -cE 'failed \(|\[alert\]|\[crit\]|\[emerg\]' /tmp/nginx/error.log)
grep -E 'accept4|failed \(|\[alert\]|\[crit\]|\[emerg\]' /tmp/nginx/error.log | head -20 | sed 's/^/NGINX-ERRLOG /'
echo NGINX-DONE
"#,
        v6 = zone::V6ONLY,
    )
}

/// What the driver saw while the guest waited for it.
#[derive(Debug)]
struct Interaction {
    /// The world client's page from the guest's httpd, or why there is none.
    page: Result<String, String>,
    /// What the guest's `nc -l` sent back to the world client (nothing), or the error.
    nc: Result<String, String>,
    /// The world client's page from busybox-static's httpd, or why there is none.
    static_page: Result<String, String>,
    /// What busybox-static's `nc -l` sent back (nothing), or the error.
    static_nc: Result<String, String>,
    /// The Go server's answer, or the error.
    go_server: Result<String, String>,
    /// The client's dummy, from dns-cache's mappings after the inbound connections.
    client_dummy: Option<Ipv4Addr>,
    /// How the host-server restart went.
    restart: Result<(), String>,
    /// The `kill -9` of host-server under the guest's `nc -l`, its restart, and the world
    /// client's line to the same port after it (the VMM registered the listener again).
    after_kill: Result<(), String>,
    /// The guest's UDP echo server across the same kill: echoed before it (ms from the first
    /// datagram), and after the restart (ms from host-server's start).
    udp_after_kill: Result<(u128, u128), String>,
}

impl Default for Interaction {
    fn default() -> Self {
        fn not_run<T>() -> Result<T, String> {
            Err("the guest never asked for it".to_owned())
        }
        Self {
            page: not_run(),
            nc: not_run(),
            static_page: not_run(),
            static_nc: not_run(),
            go_server: not_run(),
            client_dummy: None,
            restart: not_run(),
            after_kill: not_run(),
            udp_after_kill: not_run(),
        }
    }
}

/// What the driver saw of the nginx run.
#[derive(Debug)]
struct NginxSeen {
    /// Whether host-server's listener on the port (httpd's, in the main run) was gone before.
    port_free: Result<(), String>,
    /// The world's requests to the guest's nginx.
    load: Result<vm_world::Load, String>,
    /// The client's dummy, from dns-cache's mappings after the load.
    dummy: Option<Ipv4Addr>,
}

/// One attempt at the group: a fresh world, the main VM run, the nginx run.
struct Attempt {
    run: Run,
    seen: Interaction,
    /// The nginx run; none when the main run's guest crashed and the group runs again.
    nginx: Option<(Run, NginxSeen)>,
    mappings: Vec<(Ipv4Addr, Ipv6Addr)>,
    /// `outsock vm run -- curl …` against the same host-server: its status and output.
    vm_run: Result<(Option<i32>, String), String>,
}

/// Runs the group; reports every check in [`NAMES`]. With `--retry-guest-crash` a guest crash
/// (emulation trouble in the lab) gets one more attempt in a fresh world.
pub fn run(d: &mut Driver) {
    let mut attempt = attempt(d, d.args.retry_guest_crash);
    if let Ok(a) = &attempt {
        if d.args.retry_guest_crash && a.run.guest_crashed() {
            d.keep_crashed_log("vm0");
            d.note(&format!(
                "vm0: the guest crashed ({}; console in vm0-crashed.log); running the group again",
                a.run.stderr.lines().last().unwrap_or("no message").trim()
            ));
            attempt = self::attempt(d, false);
        }
    }
    match attempt {
        Ok(a) => {
            judge(d, &a.run, &a.seen, &a.mappings, a.nginx.as_ref());
            let pages = |out: &str| out.matches(INDEX_BODY.trim()).count();
            let ok = matches!(&a.vm_run, Ok((Some(0), out)) if pages(out) == VM_RUN_FETCHES);
            d.report(
                "vm-run",
                ok,
                &match &a.vm_run {
                    Ok((status, out)) => format!(
                        "outsock vm run -- curl -4 http://{}/index.html ({VM_RUN_FETCHES} times, a connection each): exit {status:?}, pages printed {} (want {VM_RUN_FETCHES}); outsock vm ls showed vm0 running, then stopped; its metrics socket counted exits, guest vsock connections, passed sockets and connects on kept host.sock streams, and the guest's driver took the vsock queue size offered ({}); see vm-run.log",
                        zone::V6ONLY,
                        pages(out),
                        outsock_vmm::devices::virtio::vsock::QUEUE_SIZE
                    ),
                    Err(e) => e.clone(),
                },
            );
        }
        Err(e) => {
            for name in NAMES {
                d.report(name, false, &format!("the test world did not start: {e:#}"));
            }
        }
    }
}

/// A fresh world and the group's VM runs. With `retry_on_crash`, a crash of the main run's
/// guest ends the attempt there (the group runs again).
fn attempt(d: &Driver, retry_on_crash: bool) -> anyhow::Result<Attempt> {
    let extra = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{HTTPD_PORT}, {NC_PORT}, {STATIC_HTTPD_PORT}, {STATIC_NC_PORT}, {GO_SERVER_PORT}, {UDP_SERVER_PORT}]\n[vms.vm0]\nsocket = \"{VM_SOCKET}\"\naddress = \"{}\"\nvmm_uid = 0\n",
        addr::HOST,
        addr::HOST_VMS[0]
    );
    let statics = format!("[static]\n\"{STATIC_DUMMY}\" = \"{}\"\n", addr::ECHO);
    let mut stack = Stack::start_with("labvm", &statics, &extra)?;
    vm_world::start_servers(&mut stack)?;
    std::fs::write(stack.world.path("www").join("vm-e2e.sh"), guest_script())?;
    std::fs::write(
        stack.world.path("www").join("py-clients.py"),
        programs::PY_CLIENTS,
    )?;
    std::fs::write(stack.world.path("www").join("nginx.conf"), NGINX_CONF)?;
    std::fs::write(stack.world.path("www").join("vm-nginx.sh"), nginx_script())?;
    // Compiled here, on the build machine's glibc (the one the guest image carries), served
    // like the script.
    let www = stack.world.path("www");
    programs::build_c(
        &www,
        "high_fds",
        &[programs::C_COMMON, programs::C_HIGH_FDS],
    )?;
    programs::build_c(
        &www,
        "close_range",
        &[programs::C_COMMON, programs::C_CLOSE_RANGE],
    )?;
    // Built by `run` (CGO_ENABLED=0) next to the guest binaries; a missing one fails
    // vm-go-client (the guest's fetch fails).
    if let Some(bins) = &d.args.bin_dir {
        let _ = std::fs::copy(bins.join(GO_CLIENT), www.join("go-client"));
    }
    let host_sock = stack.host_sock().to_string_lossy().into_owned();
    // Not in the results folder: a 9p share cannot hold a socket.
    let notify = Notify::bind(
        std::env::temp_dir().join("outsock-lab-vm0.notify"),
        Some(VM_SOCKET.into()),
    );
    let mut seen = Interaction::default();
    let mut on_line = |line: &str| -> Option<String> {
        match line.trim() {
            "INBOUND-READY" => {
                inbound(&stack, &mut seen);
                Some("go\n".into())
            }
            "KILL-NOW" => {
                (seen.after_kill, seen.udp_after_kill) = kill_and_reach(&mut stack);
                Some("go\n".into())
            }
            "RESTART-NOW" => {
                stack.stop_host();
                seen.restart = stack.start_host().map_err(|e| format!("{e:#}"));
                Some("go\n".into())
            }
            _ => None,
        }
    };
    // The run's name is the VM's name, which host-server must know ([vms.vm0]).
    let run = d.run_with(
        "vm0",
        &[
            "--host-socket",
            &host_sock,
            "--vsock-socket",
            VM_SOCKET,
            "--mem-mib",
            "512",
        ],
        Some(&format!(
            "curl -4 -sS -m 60 -o /tmp/e2e.sh http://{}/vm-e2e.sh; echo FETCH-RC=$?; sh /tmp/e2e.sh",
            zone::V6ONLY
        )),
        RunOpts {
            notify: notify.as_ref().ok(),
            on_line: Some(&mut on_line),
            timeout: Some(RUN_LIMIT),
            ..RunOpts::default()
        },
    );
    let mappings = vm_world::mappings(&stack).unwrap_or_default();
    if retry_on_crash && run.guest_crashed() {
        let _ = std::fs::write(
            Path::new(&d.args.logs).join("vm-e2e-daemons.log"),
            stack.logs(),
        );
        return Ok(Attempt {
            run,
            seen,
            nginx: None,
            mappings,
            vm_run: Err("not run: the group runs again".to_owned()),
        });
    }
    let nginx = nginx_run(d, &stack, &host_sock);
    let vm_run = vm_run(d, &host_sock);
    let _ = std::fs::write(
        Path::new(&d.args.logs).join("vm-e2e-daemons.log"),
        stack.logs(),
    );
    Ok(Attempt {
        run,
        seen,
        nginx: Some(nginx),
        mappings,
        vm_run,
    })
}

/// nginx in a VM of its own (named vm0 too: host-server knows that one), after the main run,
/// so that a guest crash under its load (QEMU's emulated SVM; see README.md) repeats only this
/// run. The console goes to `vm0-nginx.log`.
fn nginx_run(d: &Driver, stack: &Stack, host_sock: &str) -> (Run, NginxSeen) {
    let once = || {
        // nginx listens on httpd's port: host-server's listener must be gone first.
        let mut seen = NginxSeen {
            port_free: vm_world::wait_not_listening(
                stack.world.host(),
                HTTPD_PORT,
                Duration::from_secs(30),
            )
            .map_err(|e| format!("{e:#}")),
            load: Err("the guest never asked for it".to_owned()),
            dummy: None,
        };
        let mut on_line = |line: &str| -> Option<String> {
            (line.trim() == "NGINX-READY").then(|| {
                nginx_load(stack, &mut seen);
                "go\n".to_owned()
            })
        };
        let run = d.run_with(
            "vm0",
            &[
                "--host-socket",
                host_sock,
                "--vsock-socket",
                VM_SOCKET,
                "--mem-mib",
                "512",
            ],
            Some(&format!(
                "curl -4 -sS -m 60 -o /tmp/nginx.sh http://{}/vm-nginx.sh; echo FETCH-RC=$?; sh /tmp/nginx.sh",
                zone::V6ONLY
            )),
            RunOpts {
                on_line: Some(&mut on_line),
                timeout: Some(NGINX_RUN_LIMIT),
                log_name: Some("vm0-nginx"),
                ..RunOpts::default()
            },
        );
        (run, seen)
    };
    // Its load crashed the emulated guest in 3 of 8 tries here (a triple fault, nothing on the
    // console first): with `--retry-guest-crash` a crash is run again, up to NGINX_TRIES runs
    // in all, each crashed console kept. Any other failure is a failure at once.
    let mut tries = 1;
    loop {
        let run = once();
        if !(d.args.retry_guest_crash && run.0.guest_crashed() && tries < NGINX_TRIES) {
            return run;
        }
        let kept = format!("vm0-nginx-crashed-{tries}");
        d.keep_crashed_log_as("vm0-nginx", &kept);
        d.note(&format!(
            "vm0-nginx: the guest crashed ({}; console in {kept}.log); running it again ({} of {NGINX_TRIES})",
            run.0.stderr.lines().last().unwrap_or("no message").trim(),
            tries + 1
        ));
        tries += 1;
    }
}

/// Runs of the nginx VM at most, when the emulated guest crashes under the load (in the lab
/// here 6 of 13 runs over two sessions crashed; with six runs a failed check from emulation
/// alone is about 1 in 100, and the six fit the lab's time bound).
const NGINX_TRIES: u32 = 6;

/// `outsock vm run --name vm0 … -- curl -4 …`: one program in a fresh VM, as a user would run
/// it; `outsock vm ls` asked while it runs (vm0 running, its VMM's pid) and after (stopped).
/// Returns the run's status and stdout, or what went wrong.
fn vm_run(d: &Driver, host_sock: &str) -> Result<(Option<i32>, String), String> {
    let outsock = d.args.outsock.as_ref().ok_or("no --outsock given")?;
    let vm0 = |json: &str| {
        json.lines()
            .find(|l| l.contains("\"name\":\"vm0\""))
            .map(str::to_owned)
    };
    let ls = || -> Result<String, String> {
        let out = std::process::Command::new(outsock)
            .args(["vm", "ls", "--json", "--socket", host_sock])
            .output()
            .map_err(|e| format!("cannot run outsock vm ls: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "outsock vm ls: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut cmd = std::process::Command::new(outsock);
    cmd.args(["vm", "run", "--name", "vm0", "--host-socket", host_sock])
        .args([
            "--vsock-socket",
            VM_SOCKET,
            "--metrics-socket",
            METRICS_SOCKET,
            "--vmm",
        ])
        .arg(&d.args.vmm)
        .arg("--")
        .args(["curl", "-4", "-sS", "-m", "30", "-H", "Connection:close"])
        .args((0..VM_RUN_FETCHES).map(|_| format!("http://{}/index.html", zone::V6ONLY)))
        // /init runs the words with `sh -c`: a moment after curl for the metrics scrapes.
        .args(["&&", "sleep", "3"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(bins) = &d.args.bin_dir {
        cmd.env("OUTSOCK_GUEST_BINS", bins);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {} vm run: {e}", outsock.display()))?;
    // While it runs: vm0 shows as running, with its VMM's pid.
    let pid = child.id();
    let mut during = None;
    let mut metrics = String::new();
    // `vm run` builds (or finds in its cache) the guest image first: under the lab's emulation
    // that alone may take minutes. Polled until it ends (the lab's own bound applies).
    let until = std::time::Instant::now() + Duration::from_secs(600);
    let started = std::time::Instant::now();
    let (mut polls, mut last) = (0u32, String::new());
    let counter = |text: &str, series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let alive =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    while during.is_none() && std::time::Instant::now() < until && alive() {
        polls += 1;
        if let Some(line) = vm0(&ls()?) {
            last.clone_from(&line);
            if line.contains("\"running\":true") && !line.contains("\"vmm_pid\":0,") {
                during = Some(line);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The VMM's counters, scraped until the VM ends (they only grow): the last answer, once
    // the guest's curl went through a socket host-server passed to the VMM.
    while during.is_some() && std::time::Instant::now() < until && alive() {
        let text = scrape(METRICS_SOCKET);
        if text.starts_with("HTTP/1.0 200 OK") {
            metrics = text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for outsock vm run: {e}"))?;
    let after = ls()?;
    let text = format!(
        "{}\n--- stderr ---\n{}\n--- vm ls while running ---\n{}\n--- vm ls after ---\n{after}\n--- the VMM's metrics while running ---\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        during.clone().unwrap_or_else(|| format!(
            "(vm0 never showed as running: {polls} polls in {:.1} s, the last {last})",
            started.elapsed().as_secs_f64()
        )),
    );
    let _ = std::fs::write(d.args.logs.join("vm-run.log"), &text);
    if during.is_none() {
        return Err(
            "outsock vm ls never showed vm0 running with its VMM's pid; see vm-run.log".into(),
        );
    }
    let io_out = counter(
        &metrics,
        "outsock_vmm_exits_total{vm=\"vm0\",kind=\"io_out\"} ",
    );
    let passed = counter(&metrics, "outsock_vmm_passed_sockets_total{vm=\"vm0\"} ");
    let reused = counter(
        &metrics,
        "outsock_vmm_kept_streams_reused_total{vm=\"vm0\"} ",
    );
    let guest = counter(
        &metrics,
        "outsock_vmm_vsock_connections_total{vm=\"vm0\",by=\"guest\"} ",
    );
    // Linux 6.1's driver takes the size the device offers (and posts an RX buffer per two
    // descriptors until the queue is full).
    let rx_queue = counter(&metrics, "outsock_vmm_vsock_rx_queue_size{vm=\"vm0\"} ");
    let offered = u64::from(outsock_vmm::devices::virtio::vsock::QUEUE_SIZE);
    if !matches!(io_out, Some(n) if n > 0)
        || !matches!(passed, Some(n) if n > 0)
        || !matches!(guest, Some(n) if n > 0)
        || !matches!(reused, Some(n) if n > 0)
        || rx_queue != Some(offered)
    {
        return Err(format!(
            "the VMM's metrics while it ran: exits io_out {io_out:?}, guest vsock connections {guest:?}, passed sockets {passed:?}, connects on kept host.sock streams {reused:?} (want each > 0), the vsock RX queue's size {rx_queue:?} (want the {offered} offered); see vm-run.log"
        ));
    }
    match vm0(&after) {
        Some(l) if l.contains("\"running\":false") => {}
        other => {
            return Err(format!(
                "after the run, outsock vm ls shows vm0 as {other:?}, not stopped; see vm-run.log"
            ))
        }
    }
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// One scrape of a VMM's metrics socket: the whole HTTP answer, or the error.
fn scrape(path: &str) -> String {
    let once = || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text)?;
        Ok(text)
    };
    once().unwrap_or_else(|e| format!("(scrape failed: {e})"))
}

/// The world's side of the inbound checks, while the guest's servers wait.
fn inbound(stack: &Stack, seen: &mut Interaction) {
    let host = stack.world.host();
    for port in [
        HTTPD_PORT,
        NC_PORT,
        STATIC_HTTPD_PORT,
        STATIC_NC_PORT,
        GO_SERVER_PORT,
    ] {
        // 60 s, not 20: in one CI run on the loaded machine (the lab VM booted a third time
        // after its own crashes) busybox-static's httpd under the guest's supervisor was not
        // listening 20 s after the guest said it was ready; the same code passed the reruns.
        if let Err(e) = vm_world::wait_listening(host, port, Duration::from_secs(60)) {
            seen.page = Err(format!("{e:#}"));
            return;
        }
    }
    let text = |r: anyhow::Result<Vec<u8>>| {
        r.map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| format!("{e:#}"))
    };
    seen.page = text(vm_world::world_client(
        stack,
        addr::HOST_VMS[0],
        HTTPD_PORT,
        b"GET /index.html HTTP/1.0\r\n\r\n".to_vec(),
    ));
    seen.nc = text(vm_world::world_client(
        stack,
        addr::HOST_VMS[0],
        NC_PORT,
        b"from-the-world\n".to_vec(),
    ));
    seen.static_page = text(vm_world::world_client(
        stack,
        addr::HOST_VMS[0],
        STATIC_HTTPD_PORT,
        b"GET /index.html HTTP/1.0\r\n\r\n".to_vec(),
    ));
    seen.static_nc = text(vm_world::world_client(
        stack,
        addr::HOST_VMS[0],
        STATIC_NC_PORT,
        b"from-the-world-static\n".to_vec(),
    ));
    seen.go_server = text(vm_world::world_client(
        stack,
        addr::HOST_VMS[0],
        GO_SERVER_PORT,
        b"to-the-go-server\n".to_vec(),
    ));
    seen.client_dummy = vm_world::mappings(stack)
        .unwrap_or_default()
        .into_iter()
        .find(|(_, v6)| *v6 == addr::CLIENT)
        .map(|(d, _)| d);
}

/// host-server killed (SIGKILL) and started again under the guest's `nc -l`: once the VMM
/// registered the guest's listener again, a world client's line reaches it.
/// host-server killed with SIGKILL under the guest's `nc -l` and UDP echo server, and started
/// again: the listener's result, and the UDP server's (echoed before, then after).
type AfterKill = (Result<(), String>, Result<(u128, u128), String>);

fn kill_and_reach(stack: &mut Stack) -> AfterKill {
    let host = stack.world.host();
    if let Err(e) = vm_world::wait_listening(host, NC_PORT, Duration::from_secs(20)) {
        let e = format!("before the kill: {e:#}");
        return (Err(e.clone()), Err(e));
    }
    let udp_before = vm_world::world_udp_echo(
        stack,
        addr::HOST_VMS[0],
        UDP_SERVER_PORT,
        b"before-the-kill",
        Duration::from_secs(30),
    );
    stack.kill_host();
    std::thread::sleep(Duration::from_secs(1));
    let started = stack.start_host();
    let restarted = std::time::Instant::now();
    if let Err(e) = started {
        let e = format!("host-server did not start again: {e:#}");
        return (Err(e.clone()), Err(e));
    }
    let listener = vm_world::wait_listening(stack.world.host(), NC_PORT, Duration::from_secs(30))
        .map_err(|e| format!("the guest's listener was not registered again: {e:#}"))
        .and_then(|()| {
            vm_world::world_client(
                stack,
                addr::HOST_VMS[0],
                NC_PORT,
                b"after-the-kill\n".to_vec(),
            )
            .map(drop)
            .map_err(|e| format!("{e:#}"))
        });
    let udp = udp_before
        .map_err(|e| format!("before the kill: {e:#}"))
        .and_then(|before| {
            vm_world::world_udp_echo(
                stack,
                addr::HOST_VMS[0],
                UDP_SERVER_PORT,
                b"after-the-kill",
                Duration::from_secs(30),
            )
            .map_err(|e| format!("after the restart: {e:#}"))?;
            Ok((before.as_millis(), restarted.elapsed().as_millis()))
        });
    (listener, udp)
}

/// The world's requests to the guest's nginx, while it waits.
fn nginx_load(stack: &Stack, seen: &mut NginxSeen) {
    seen.load = vm_world::wait_listening(stack.world.host(), HTTPD_PORT, Duration::from_secs(30))
        .and_then(|()| {
            vm_world::http_load(
                stack,
                addr::HOST_VMS[0],
                HTTPD_PORT,
                (NGINX_REQUESTS, NGINX_PARALLEL),
                NGINX_BODY,
                NGINX_LOAD_LIMIT,
            )
        })
        .map_err(|e| format!("{e:#}"));
    seen.dummy = vm_world::mappings(stack)
        .unwrap_or_default()
        .into_iter()
        .find(|(_, v6)| *v6 == addr::CLIENT)
        .map(|(d, _)| d);
}

fn md5_of(bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join("outsock-lab-md5");
    let _ = std::fs::create_dir_all(&dir);
    let f = dir.join("big.bin");
    if std::fs::write(&f, bytes).is_err() {
        return String::new();
    }
    std::process::Command::new("md5sum")
        .arg(&f)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn in_pool(a: Ipv4Addr, base: Ipv4Addr) -> bool {
    u32::from(a) >> 12 == u32::from(base) >> 12
}

/// The synthesised dummies (destination pool 10.170.160.0/20) in a marker line's words
/// (`0 KDIG-UDP=10.170.160.2`).
fn dummies(words: &str) -> Vec<Ipv4Addr> {
    words
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter_map(|w| w.parse().ok())
        .filter(|a| in_pool(*a, Ipv4Addr::new(10, 170, 160, 0)))
        .collect()
}

/// `BEFORE`/`AFTER` lines: dummy → the IPv6 address the whoami server was reached on.
fn reached(run: &Run, tag: &str) -> BTreeMap<Ipv4Addr, String> {
    run.lines
        .iter()
        .filter_map(|(_, l)| {
            let mut w = l.trim().strip_prefix(tag)?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next().unwrap_or("-").to_owned()))
        })
        .collect()
}

#[allow(clippy::too_many_lines)] // One check after another, each a few lines.
fn judge(
    d: &mut Driver,
    run: &Run,
    seen: &Interaction,
    mappings: &[(Ipv4Addr, Ipv6Addr)],
    nginx_seen: Option<&(Run, NginxSeen)>,
) {
    let marker = |m: &str| {
        run.lines
            .iter()
            .find_map(|(_, l)| l.trim().strip_prefix(m).map(|v| v.trim().to_owned()))
    };
    let rc_of = |m: &str| marker(m).and_then(|v| v.split_whitespace().next().map(str::to_owned));
    let line_is = |want: &str| run.lines.iter().any(|(_, l)| l.trim() == want);

    let probe = run
        .notify
        .iter()
        .find(|(_, s)| s.starts_with("probe:"))
        .map_or("no READY=1 came", |(_, s)| s.as_str())
        .to_owned();
    d.report(
        "vm-boot",
        run.has("E2E-DONE") && run.has("OUTSOCK-INIT: exit=0") && probe == "probe: accepting",
        &format!(
            "guest with vsock fetched its script (FETCH-RC={:?}) and ran it to the end -> VMM {}; vsock socket at READY=1: {probe}",
            rc_of("FETCH-RC="),
            run.status_text()
        ),
    );
    let index = INDEX_BODY.trim();
    let bodies = run.console().matches(index).count();
    for (name, m, what) in [
        ("vm-curl", "CURL-RC=", "curl -4 http://v6only (by name)"),
        ("vm-wget", "WGET-RC=", "wget -4 http://v6only (by name)"),
        (
            "vm-busybox-wget",
            "BBWGET-RC=",
            "busybox wget (dynamic) by name",
        ),
    ] {
        let rc = rc_of(m);
        d.report(
            name,
            rc.as_deref() == Some("0"),
            &format!("{what}: exit {rc:?}; index bodies on the console: {bodies}"),
        );
    }
    static_clients(d, run, mappings);
    let nc_rc = rc_of("NC-RC=");
    d.report(
        "vm-nc",
        // The piped line goes to the server; the one on the console is its echo.
        nc_rc.as_deref() == Some("0") && line_is("via-netcat"),
        &format!("netcat-traditional to the IPv6-only TCP echo server by name: exit {nc_rc:?}"),
    );
    let snc = marker("SNC-OUT=").unwrap_or_default();
    d.report(
        "vm-static-nc",
        snc == "via-static-nc",
        &format!("busybox-static nc (the image's /bin/busybox, under /init's supervisor) to the IPv6-only TCP echo server by name: echoed {snc:?}"),
    );
    let smap_rc = rc_of("SMAP-RC=");
    d.report(
        "vm-static-mapping",
        smap_rc.as_deref() == Some("0") && line_is("via-static-mapping"),
        &format!(
            "netcat-traditional to {STATIC_DUMMY}, the echo server's static mapping in dns-cache's [static], by its IPv4 literal: exit {smap_rc:?}"
        ),
    );
    let ncu_rc = rc_of("NCU-RC=");
    d.report(
        "vm-udp",
        ncu_rc.as_deref() == Some("0") && line_is("via-udp"),
        &format!(
            "netcat-traditional -u to the IPv6-only UDP echo server by name: echo {}, exit {ncu_rc:?}",
            if line_is("via-udp") { "came back" } else { "missing" }
        ),
    );
    let udp = dummies(&marker("KDIG-RC=").unwrap_or_default());
    let tcp = dummies(&marker("KDIGTCP-RC=").unwrap_or_default());
    d.report(
        "vm-kdig",
        rc_of("KDIG-RC=").as_deref() == Some("0")
            && rc_of("KDIGTCP-RC=").as_deref() == Some("0")
            && !udp.is_empty()
            && !tcp.is_empty(),
        &format!("kdig @{GUEST_DNS} (through host-server to dns-cache): over UDP {udp:?}, over TCP {tcp:?}"),
    );
    bind_dig(d, run, mappings);
    // The lines a guest step printed through `sed 's/^/PREFIX /'`, without the prefix.
    let output_of = |prefix: &str| -> String {
        run.lines
            .iter()
            .filter_map(|(_, l)| l.trim_end().strip_prefix(prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let py_rc = rc_of("PY-RC=");
    let py_out = output_of("PY ");
    d.report(
        "vm-python3",
        py_rc.as_deref() == Some("0") && py_out == programs::PY_CLIENTS_OUTPUT,
        &format!(
            "python3 clients by name (blocking TCP, asyncio, UDP unconnected and connected): exit {py_rc:?}, output {py_out:?}"
        ),
    );
    // The program's connected socket is liboutsock's vsock stream: its receive buffer
    // (SO_VM_SOCKETS_BUFFER_SIZE, level AF_VSOCK), the credit the VMM may use, is what
    // liboutsock asked for, not Linux's 256 KiB.
    let vsock_buf = marker("VSOCKBUF=");
    d.report(
        "vm-vsock-buffer",
        vsock_buf.as_deref()
            == Some(shared_proto::translate::VSOCK_BUFFER_SIZE.to_string().as_str()),
        &format!(
            "a python3 client's connected socket in the guest (a vsock stream) has a receive buffer of {vsock_buf:?} bytes (want {})",
            shared_proto::translate::VSOCK_BUFFER_SIZE
        ),
    );
    high_fds(d, run);
    let want: Vec<u8> = (0..BIG_FILE_LEN).map(big_file_byte).collect();
    let want_md5 = md5_of(&want);
    let got_md5 = marker("BIG-MD5=")
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    d.report(
        "vm-big-md5",
        !want_md5.is_empty() && got_md5 == want_md5,
        &format!(
            "md5 of a {BIG_FILE_LEN}-byte file fetched with wget -4: {got_md5} (want {want_md5})"
        ),
    );
    let num = |m: &str| marker(m).and_then(|v| v.parse::<u64>().ok());
    let (sent, received) = (num("IPERF-SENT="), num("IPERF-RECEIVED="));
    d.report(
        "vm-iperf3",
        rc_of("IPERF-RC=").as_deref() == Some("0")
            && sent.is_some_and(|s| s >= IPERF_BYTES)
            && received.is_some_and(|r| r > 0),
        &format!(
            "iperf3 -4 -n {IPERF_BYTES} to the world's iperf3 server by name: exit {:?}, sent {sent:?}, server received {received:?}{} (throughput not measured here: nested emulation)",
            rc_of("IPERF-RC="),
            marker("IPERF-ERROR").map_or(String::new(), |e| format!(", error {e}")),
        ),
    );

    // Inbound: the client's dummy must be from the source pool, be what the guest's servers
    // saw, and map back to the client's IPv6 address in dns-cache.
    let dummy = seen
        .client_dummy
        .filter(|a| in_pool(*a, Ipv4Addr::new(172, 21, 112, 0)));
    let dummy_text = dummy.map_or("none".to_owned(), |a| a.to_string());
    // busybox httpd -v logs "IP:PORT: response:200"; nc -v "connect to … from … [IP] PORT".
    let log_has = |prefix: &str| {
        dummy.is_some_and(|a| {
            run.lines.iter().any(|(_, l)| {
                l.trim().starts_with(prefix)
                    && (l.contains(&format!("{a}:")) || l.contains(&format!("[{a}]")))
            })
        })
    };
    // busybox-static httpd on a dual-stack AF_INET6 listener logs "[::ffff:IP]:PORT: …".
    let log_has_mapped = |prefix: &str| {
        dummy.is_some_and(|a| {
            run.lines
                .iter()
                .any(|(_, l)| l.trim().starts_with(prefix) && l.contains(&format!("[::ffff:{a}]:")))
        })
    };
    let page_ok = seen
        .page
        .as_ref()
        .is_ok_and(|p| p.contains(" 200 ") && p.contains("hello from the guest"));
    d.report(
        "vm-inbound-httpd",
        page_ok && log_has("HTTPD-LOG"),
        &format!(
            "world client [{}] -> [{}]:{HTTPD_PORT} -> busybox httpd in the guest: {}; dummy of the client in dns-cache: {dummy_text}, in the httpd log: {}",
            addr::CLIENT,
            addr::HOST_VMS[0],
            match &seen.page {
                Ok(p) if page_ok => "page served".to_owned(),
                Ok(p) => format!("unexpected answer {:?}", p.chars().take(120).collect::<String>()),
                Err(e) => e.clone(),
            },
            log_has("HTTPD-LOG"),
        ),
    );
    let data = marker("NC-IN-DATA=").unwrap_or_default();
    d.report(
        "vm-inbound-nc",
        seen.nc.is_ok() && data == "from-the-world" && log_has("NC-IN-LOG"),
        &format!(
            "world client -> [{}]:{NC_PORT} -> nc -l -p {NC_PORT} in the guest: received {data:?} ({}), peer {dummy_text} in nc -v's log: {}",
            addr::HOST_VMS[0],
            seen.nc.as_ref().map_or_else(Clone::clone, |_| "client done".to_owned()),
            log_has("NC-IN-LOG"),
        ),
    );
    let static_ok = seen
        .static_page
        .as_ref()
        .is_ok_and(|p| p.contains(" 200 ") && p.contains("hello from the guest"));
    d.report(
        "vm-inbound-static-httpd",
        run.has("OUTSOCK-INIT: supervisor on")
            && static_ok
            && log_has_mapped("SHTTPD-LOG")
            && line_is("RELISTEN=alive"),
        &format!(
            "world client [{}] -> [{}]:{STATIC_HTTPD_PORT} -> busybox-static httpd -p {STATIC_HTTPD_PORT} (AF_INET6 on [::], dual stack) in the guest, under /init's supervisor: {}; client's dummy {dummy_text} in its log, v4-mapped: {}; a second httpd on the port once the first was killed: {}",
            addr::CLIENT,
            addr::HOST_VMS[0],
            match &seen.static_page {
                Ok(_) if static_ok => "page served".to_owned(),
                Ok(p) => format!("unexpected answer {:?}", p.chars().take(120).collect::<String>()),
                Err(e) => e.clone(),
            },
            log_has_mapped("SHTTPD-LOG"),
            marker("RELISTEN=").map_or_else(
                || "no marker".to_owned(),
                |v| format!("{v} {:?}", run
                    .lines
                    .iter()
                    .filter_map(|(_, l)| l.trim().strip_prefix("RELISTEN-LOG "))
                    .collect::<Vec<_>>())
            ),
        ),
    );
    let snc_data = marker("SNC-IN-DATA=").unwrap_or_default();
    d.report(
        "vm-inbound-static-nc",
        run.has("OUTSOCK-INIT: supervisor on")
            && seen.static_nc.is_ok()
            && snc_data == "from-the-world-static",
        &format!(
            "world client -> [{}]:{STATIC_NC_PORT} -> busybox-static nc -l -p {STATIC_NC_PORT} (AF_INET6 on [::], dual stack) in the guest, under /init's supervisor: received {snc_data:?} ({}){}",
            addr::HOST_VMS[0],
            seen.static_nc.as_ref().map_or_else(Clone::clone, |_| "client done".to_owned()),
            {
                let errs: Vec<&str> = run
                    .lines
                    .iter()
                    .filter_map(|(_, l)| l.trim().strip_prefix("SNC-IN-ERR "))
                    .collect();
                if errs.is_empty() { String::new() } else { format!(", stderr {errs:?}") }
            },
        ),
    );
    let go_peer = marker("GOSRV peer ").and_then(|p| p.parse::<std::net::SocketAddrV4>().ok());
    let go_answer_ok = seen
        .go_server
        .as_ref()
        .is_ok_and(|a| a.trim() == "go-served");
    d.report(
        "vm-inbound-go-server",
        run.has("OUTSOCK-INIT: supervisor on")
            && go_answer_ok
            && go_peer.is_some_and(|p| Some(*p.ip()) == seen.client_dummy),
        &format!(
            "world client [{}] -> [{}]:{GO_SERVER_PORT} -> a Go tcp4 server (CGO_ENABLED=0) in the guest, under /init's supervisor: answer {:?}; the peer it saw {} (want the client's dummy {dummy_text}); its output {:?}",
            addr::CLIENT,
            addr::HOST_VMS[0],
            seen.go_server,
            go_peer.map_or("none".to_owned(), |p| p.to_string()),
            run.lines
                .iter()
                .filter_map(|(_, l)| l.trim().strip_prefix("GOSRV "))
                .collect::<Vec<_>>(),
        ),
    );
    match nginx_seen {
        Some((run, seen)) => nginx(d, run, seen),
        None => d.report("vm-inbound-nginx", false, "the nginx run did not happen"),
    }

    // Restart: every dummy resolved before reaches the same IPv6 after, and that IPv6 is the
    // one dns-cache maps it to; new connections (by name) and a new UDP association work.
    let before = reached(run, "BEFORE");
    let after = reached(run, "AFTER");
    let expected: Vec<String> = [addr::HTTP, addr::ECHO]
        .into_iter()
        .chain(zone::MULTI_AAAA)
        .map(|a| a.to_string())
        .collect();
    let mapped = |d: &Ipv4Addr| {
        mappings
            .iter()
            .find(|(m, _)| m == d)
            .map(|(_, v6)| v6.to_string())
    };
    let consistent = before.len() == expected.len()
        && before == after
        && before
            .iter()
            .all(|(d, v6)| expected.contains(v6) && mapped(d).as_ref() == Some(v6));
    let after_ok = rc_of("CURL-AFTER-RC=").as_deref() == Some("0")
        && !dummies(&marker("KDIG-AFTER-RC=").unwrap_or_default()).is_empty();
    let kill_data = marker("NC-KILL-DATA=").unwrap_or_default();
    d.report(
        "vm-inbound-after-kill",
        seen.after_kill.is_ok() && kill_data == "after-the-kill",
        &format!(
            "nc -l -p {NC_PORT} in the guest; host-server killed (SIGKILL) and started again; the VMM registered the listener again ({}); the world client's line after it: received {kill_data:?}",
            seen.after_kill.as_ref().map_or_else(Clone::clone, |()| "ok".to_owned()),
        ),
    );
    let udp_alive = marker("UDP-KILL=").unwrap_or_default();
    d.report(
        "vm-udp-server-after-kill",
        seen.udp_after_kill.is_ok() && udp_alive == "alive",
        &format!(
            "python3's UDP echo server on port {UDP_SERVER_PORT} in the guest, across the same kill -9 and restart of host-server: {}; the server after it: {udp_alive:?} (want alive)",
            seen.udp_after_kill.as_ref().map_or_else(
                Clone::clone,
                |(before, after)| format!("a world client's datagram echoed before the kill (after {before} ms) and after it (within {after} ms of the restart: the VMM associated the server again)")
            ),
        ),
    );
    d.report(
        "vm-restart",
        seen.restart.is_ok() && consistent && after_ok,
        &format!(
            "host-server restarted while the VM ran ({}): {} dummies resolved before reach {:?} before and {:?} after (want the zone's {} addresses, as dns-cache maps them); new curl by name exit {:?}, new kdig {:?}",
            seen.restart.as_ref().map_or_else(Clone::clone, |()| "ok".to_owned()),
            before.len(),
            before.values().collect::<Vec<_>>(),
            after.values().collect::<Vec<_>>(),
            expected.len(),
            rc_of("CURL-AFTER-RC="),
            marker("KDIG-AFTER-RC="),
        ),
    );
}

/// Whether the C programs passed: connects on descriptors above 69,000 (the guest's root may
/// raise RLIMIT_NOFILE, so all 70,000 must be held), then `close_range` and `closefrom`.
fn high_fds(d: &mut Driver, run: &Run) {
    let output_of = |prefix: &str| -> String {
        run.lines
            .iter()
            .filter_map(|(_, l)| l.trim_end().strip_prefix(prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let rc_of = |m: &str| {
        run.lines.iter().find_map(|(_, l)| {
            l.trim()
                .strip_prefix(m)
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
    };
    let (hf_rc, hf_out, hf_err) = (
        rc_of("HIGHFD-RC="),
        output_of("HIGHFD "),
        output_of("HIGHFD-ERR "),
    );
    let (cr_rc, cr_out, cr_err) = (
        rc_of("CLOSERANGE-RC="),
        output_of("CLOSERANGE "),
        output_of("CLOSERANGE-ERR "),
    );
    let took = match (run.first("HIGHFD-START"), run.first("CLOSERANGE-RC=")) {
        (Some((a, _)), Some((b, _))) => format!("{:.1} s", b.saturating_sub(a).as_secs_f64()),
        _ => "-".to_owned(),
    };
    d.report(
        "vm-high-fds",
        hf_rc.as_deref() == Some("0")
            && hf_err == "top 70000\n"
            && hf_out == programs::C_HIGH_FDS_OUTPUT
            && cr_rc.as_deref() == Some("0")
            && cr_out == programs::C_CLOSE_RANGE_OUTPUT,
        &format!(
            "C, 70,000 descriptors held (stderr {hf_err:?}, want \"top 70000\\n\"), connects above fd 69,000 to the echo server by name and by dummy: exit {hf_rc:?}, output {hf_out:?}; close_range/closefrom over two UDP associations and a TCP socket, numbers reused by a pipe, a file and a socket: exit {cr_rc:?}, output {cr_out:?}{}; {took} for both",
            if cr_err.is_empty() { String::new() } else { format!(", stderr {cr_err:?}") },
        ),
    );
}

/// Whether nginx (a master and two workers) in the guest served every request of the world
/// client, each logged with the client's source-pool dummy, and logged no accept errors.
fn nginx(d: &mut Driver, run: &Run, seen: &NginxSeen) {
    let marker = |m: &str| {
        run.lines
            .iter()
            .find_map(|(_, l)| l.trim().strip_prefix(m).map(|v| v.trim().to_owned()))
    };
    let fields = |prefix: &str| -> Vec<Vec<String>> {
        run.lines
            .iter()
            .filter_map(|(_, l)| l.trim().strip_prefix(prefix))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let dummy = seen
        .dummy
        .filter(|a| in_pool(*a, Ipv4Addr::new(172, 21, 112, 0)));
    // `uniq -c` of (peer address, status): one line, every request, the dummy, 200.
    let access = fields("NGINX-ACCESS ");
    let access_ok = dummy.is_some_and(|a| {
        access
            == [vec![
                NGINX_REQUESTS.to_string(),
                a.to_string(),
                "200".to_owned(),
            ]]
    });
    let per_worker: Vec<String> = fields("NGINX-PID ")
        .into_iter()
        .filter_map(|f| f.first().cloned())
        .collect();
    let processes = marker("NGINX-PROCESSES").unwrap_or_default();
    let accept_errors = marker("NGINX-ACCEPT-ERRORS=").unwrap_or_default();
    let bad_lines = marker("NGINX-BAD-LINES=").unwrap_or_default();
    let errlog: Vec<String> = fields("NGINX-ERRLOG ")
        .into_iter()
        .take(3)
        .map(|f| f.join(" "))
        .collect();
    let load_ok = seen
        .load
        .as_ref()
        .is_ok_and(|l| l.ok == NGINX_REQUESTS && l.failed == 0);
    let load = match &seen.load {
        Ok(l) => format!(
            "{}/{NGINX_REQUESTS} answered 200 ({NGINX_PARALLEL} at a time) in {:.1} s ({:.0} requests/s), {} failed{}",
            l.ok,
            l.took.as_secs_f64(),
            l.ok as f64 / l.took.as_secs_f64().max(0.001),
            l.failed,
            if l.failures.is_empty() { String::new() } else { format!(", e.g. {:?}", l.failures) },
        ),
        Err(e) => e.clone(),
    };
    d.report(
        "vm-inbound-nginx",
        seen.port_free.is_ok()
            && run.has("NGINX-DONE")
            && processes == "master=1 workers=2"
            && load_ok
            && access_ok
            && accept_errors == "0"
            && bad_lines == "0",
        &format!(
            "world client [{}] -> [{}]:{HTTPD_PORT} -> nginx in a guest of its own ({processes}; VMM {}){}: {load}; access log (count, peer, status): {access:?}, want [{NGINX_REQUESTS}, the client's dummy {}, 200]; requests per worker {per_worker:?}; error log: {accept_errors:?} accept4() failures, {bad_lines:?} failed/alert/crit/emerg lines{}",
            addr::CLIENT,
            addr::HOST_VMS[0],
            run.status_text(),
            seen.port_free.as_ref().err().map_or(String::new(), |e| format!(" (httpd's listener: {e})")),
            dummy.map_or("none".to_owned(), |a| a.to_string()),
            if errlog.is_empty() { String::new() } else { format!(", e.g. {errlog:?}") },
        ),
    );
}

/// The static programs /init's supervisor outsources over vsock: Debian's busybox-static (the
/// image's /bin/busybox: static glibc, its own resolver asking the loopback forwarder) and the
/// Go client (CGO_ENABLED=0), both by name. The guest has no network device, so a connect not
/// outsourced fails (ENETUNREACH); the Go client's RemoteAddr must be the dummy IPv4 that
/// dns-cache maps to the name's IPv6 address.
fn static_clients(d: &mut Driver, run: &Run, mappings: &[(Ipv4Addr, Ipv6Addr)]) {
    let rc_of = |m: &str| {
        run.lines.iter().find_map(|(_, l)| {
            l.trim()
                .strip_prefix(m)
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
    };
    let supervised = run.has("OUTSOCK-INIT: supervisor on");
    let rc = rc_of("STATICWGET-RC=");
    d.report(
        "vm-static-wget",
        supervised && rc.as_deref() == Some("0"),
        &format!(
            "busybox-static wget (the image's /bin/busybox) by name under /init's supervisor ({}): exit {rc:?}",
            if supervised { "on" } else { "NOT on" }
        ),
    );
    let out: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.trim_end().strip_prefix("GO "))
        .collect();
    let errs: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.trim_end().strip_prefix("GO-ERR "))
        .collect();
    let remote = out
        .iter()
        .find_map(|l| l.strip_prefix("remote "))
        .and_then(|a| a.trim().parse::<std::net::SocketAddrV4>().ok());
    let mapped = remote.and_then(|r| {
        mappings
            .iter()
            .find(|(m, _)| m == r.ip())
            .map(|(_, v6)| *v6)
    });
    let go_rc = rc_of("GO-RC=");
    let body = out.iter().any(|l| l.contains(INDEX_BODY.trim()));
    let sockopts = out
        .iter()
        .find_map(|l| l.strip_prefix("sockopts "))
        .unwrap_or("none printed");
    d.report(
        "vm-go-client",
        supervised
            && go_rc.as_deref() == Some("0")
            && sockopts == GO_SOCKOPTS
            && remote.is_some_and(|r| r.port() == 80 && in_pool(*r.ip(), Ipv4Addr::new(10, 170, 160, 0)))
            && mapped == Some(addr::HTTP)
            && body
            && out.iter().any(|l| l.contains(" 200 ")),
        &format!(
            "Go client (CGO_ENABLED=0) dials {} over tcp4 by name: exit {go_rc:?}, RemoteAddr {} (dns-cache maps it to {}; want {}), page {}; socket options: {sockopts:?} (want {GO_SOCKOPTS:?}){}",
            zone::V6ONLY,
            remote.map_or("none".to_owned(), |r| r.to_string()),
            mapped.map_or("nothing".to_owned(), |a| a.to_string()),
            addr::HTTP,
            if body { "printed" } else { "missing" },
            if errs.is_empty() { String::new() } else { format!(", stderr {errs:?}") },
        ),
    );
    // The same client's UDP exchanges with the world's echo server (port 7), by name: both
    // echoed, and each peer shown as the dummy dns-cache maps to the echo server's address.
    let udp_line = |what: &str| {
        out.iter()
            .find_map(|l| l.strip_prefix(&format!("udp {what} ")))
            .unwrap_or("")
            .to_owned()
    };
    let udp_ok = |line: &str, echo: &str| {
        let mut f = line.split_whitespace();
        let peer = f
            .nth(1)
            .and_then(|a| a.parse::<std::net::SocketAddrV4>().ok());
        line.starts_with(echo)
            && peer.is_some_and(|p| {
                p.port() == 7
                    && mappings
                        .iter()
                        .any(|(m, v6)| m == p.ip() && *v6 == addr::ECHO)
            })
    };
    let (dial, writeto, msg) = (udp_line("dial"), udp_line("writeto"), udp_line("msg"));
    let udp_errs: Vec<&str> = out
        .iter()
        .copied()
        .filter(|l| l.starts_with("udp error"))
        .collect();
    d.report(
        "vm-go-udp",
        supervised
            && udp_ok(&dial, "via-go-udp")
            && udp_ok(&writeto, "via-go-writeto")
            && udp_ok(&msg, "via-go-msg"),
        &format!(
            "the Go client's UDP to {}:7 by name under the supervisor (associations over vsock): connected {dial:?}, unconnected {writeto:?}, the same with sendmsg/recvmsg (the private network's end) {msg:?} (each: the echo, then the peer, the dummy for {}){}",
            zone::ECHO,
            addr::ECHO,
            if udp_errs.is_empty() { String::new() } else { format!(", {udp_errs:?}") },
        ),
    );
}

/// BIND's dig in the guest (dynamic: liboutsock preloaded, under /init's supervisor; libuv makes
/// raw `sendmmsg`/`recvmmsg` system calls): at the guest DNS address and through resolv.conf
/// (the loopback forwarder), each over UDP and over TCP. Every answer must be the one dummy
/// IPv4 that dns-cache maps to the server's IPv6 address.
fn bind_dig(d: &mut Driver, run: &Run, mappings: &[(Ipv4Addr, Ipv6Addr)]) {
    let mut ok = true;
    let mut seen = Vec::new();
    for (what, m) in [
        ("@guest-dns UDP", "DIG-AT-RC="),
        ("@guest-dns TCP", "DIG-AT-TCP-RC="),
        ("resolv.conf UDP", "DIG-CONF-RC="),
        ("resolv.conf TCP", "DIG-CONF-TCP-RC="),
    ] {
        let line = run
            .lines
            .iter()
            .find_map(|(_, l)| l.trim().strip_prefix(m).map(str::to_owned))
            .unwrap_or_default();
        let rc = line.split_whitespace().next().unwrap_or("none").to_owned();
        let got = dummies(&line);
        let mapped: Vec<Option<Ipv6Addr>> = got
            .iter()
            .map(|a| mappings.iter().find(|(m, _)| m == a).map(|(_, v6)| *v6))
            .collect();
        ok &= rc == "0" && got.len() == 1 && mapped == [Some(addr::HTTP)];
        seen.push(format!("{what}: exit {rc}, {got:?} -> {mapped:?}"));
    }
    d.report(
        "vm-dig",
        ok,
        &format!(
            "dig {} A (want the dummy dns-cache maps to {}): {}",
            zone::V6ONLY,
            addr::HTTP,
            seen.join("; ")
        ),
    );
}
