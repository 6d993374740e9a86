// The lab's Go client for the `vm` group (vm-go-client): `vmm/lab/run` builds it on the build
// machine with CGO_ENABLED=0 (a static binary: raw system calls, Go's own resolver reading
// /etc/resolv.conf), the driver serves it from the world's web server, and the guest runs it
// unmodified under /init's supervisor. It dials os.Args[1] port 80 over tcp4 by name, prints
// the connection's RemoteAddr and LocalAddr, sends an HTTP/1.0 GET of /index.html and prints
// the answer.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
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
	fmt.Fprintf(conn, "GET /index.html HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	resp, err := io.ReadAll(conn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(3)
	}
	fmt.Printf("%s", resp)
}
