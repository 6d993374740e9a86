// The lab's Go client for the `vm` group (vm-go-client): `vmm/lab/run` builds it on the build
// machine with CGO_ENABLED=0 (a static binary: raw system calls, Go's own resolver reading
// /etc/resolv.conf), the driver serves it from the world's web server, and the guest runs it
// unmodified under /init's supervisor. It dials os.Args[1] port 80 over tcp4 by name, prints
// the connection's RemoteAddr and LocalAddr, sets TCP options as Go programs do
// (SetNoDelay, SetKeepAlive, SetKeepAlivePeriod: IPPROTO_TCP and SOL_SOCKET setsockopt) and
// reads two back (TCP_NODELAY, SO_DOMAIN: getsockopt through syscall.RawConn), printing each
// error or value on one "sockopts" line, then sends an HTTP/1.0 GET of /index.html and prints
// the answer.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

func main() {
	host := os.Args[1]
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.Dial("tcp4", net.JoinHostPort(host, "80"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	fmt.Printf("remote %s\nlocal %s\n", conn.RemoteAddr(), conn.LocalAddr())
	fmt.Printf("sockopts %s\n", sockopts(conn.(*net.TCPConn)))
	fmt.Fprintf(conn, "GET /index.html HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	resp, err := io.ReadAll(conn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(3)
	}
	fmt.Printf("%s", resp)
}

// sockopts sets and reads back options on c; it returns what each call answered.
func sockopts(c *net.TCPConn) string {
	out := fmt.Sprintf("SetNoDelay(false)=%v SetKeepAlive(true)=%v SetKeepAlivePeriod(20s)=%v",
		c.SetNoDelay(false), c.SetKeepAlive(true), c.SetKeepAlivePeriod(20*time.Second))
	raw, err := c.SyscallConn()
	if err != nil {
		return out + fmt.Sprintf(" SyscallConn=%v", err)
	}
	var nodelay, domain int
	var nerr, derr error
	cerr := raw.Control(func(fd uintptr) {
		nodelay, nerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
		domain, derr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_DOMAIN)
	})
	return out + fmt.Sprintf(" Control=%v TCP_NODELAY=%d/%v SO_DOMAIN=%d/%v", cerr, nodelay, nerr, domain, derr)
}
