// The lab's Go client for the `vm` group (vm-go-client): `vmm/lab/run` builds it on the build
// machine with CGO_ENABLED=0 (a static binary: raw system calls, Go's own resolver reading
// /etc/resolv.conf), the driver serves it from the world's web server, and the guest runs it
// unmodified under /init's supervisor. It dials os.Args[1] port 80 over tcp4 by name, prints
// the connection's RemoteAddr and LocalAddr, sets TCP options as Go programs do
// (SetNoDelay, SetKeepAlive, SetKeepAlivePeriod: IPPROTO_TCP and SOL_SOCKET setsockopt) and
// reads some back (TCP_NODELAY, TCP_KEEPIDLE, SO_DOMAIN, TCP_INFO, IP_TOS, IP_TTL: getsockopt through
// syscall.RawConn), printing each error or value on one "sockopts" line, then sends an HTTP/1.0 GET of /index.html and prints
// the answer (`go-client serve PORT` instead runs a tcp4 server: see serve). Given a second name (the UDP echo server's), it then exchanges datagrams with its
// port 7 over a connected and an unconnected UDP socket (see udp).
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	if os.Args[1] == "serve" {
		serve(os.Args[2])
		return
	}
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
	if len(os.Args) > 2 {
		udp(os.Args[2])
	}
}

// udp exchanges a datagram with the UDP echo server at name port 7 twice: over a connected
// socket (Dial "udp4": Write, Read, and the RemoteAddr) and over an unconnected one
// (ListenPacket "udp4" ":0", WriteTo the address resolved, ReadFrom: the source; then
// WriteMsgUDP/ReadMsgUDP). It prints "udp dial <echo> <remote>", "udp writeto <echo> <source>"
// and "udp msg <echo> <source>", or "udp error ...".
func udp(name string) {
	c, err := net.DialTimeout("udp4", net.JoinHostPort(name, "7"), 30*time.Second)
	if err != nil {
		fmt.Printf("udp error dial %v\n", err)
		return
	}
	defer c.Close()
	buf := make([]byte, 64)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("via-go-udp")); err != nil {
		fmt.Printf("udp error write %v\n", err)
		return
	}
	n, err := c.Read(buf)
	if err != nil {
		fmt.Printf("udp error read %v\n", err)
		return
	}
	fmt.Printf("udp dial %s %s\n", buf[:n], c.RemoteAddr())
	to, err := net.ResolveUDPAddr("udp4", net.JoinHostPort(name, "7"))
	if err != nil {
		fmt.Printf("udp error resolve %v\n", err)
		return
	}
	p, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		fmt.Printf("udp error listen %v\n", err)
		return
	}
	defer p.Close()
	p.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := p.WriteTo([]byte("via-go-writeto"), to); err != nil {
		fmt.Printf("udp error writeto %v\n", err)
		return
	}
	n, from, err := p.ReadFrom(buf)
	if err != nil {
		fmt.Printf("udp error readfrom %v\n", err)
		return
	}
	fmt.Printf("udp writeto %s %s\n", buf[:n], from)
	// The same socket with sendmsg and recvmsg (WriteMsgUDP, ReadMsgUDP), as DNS servers do:
	// not notified, the kernel's own on the association's end in the private network.
	u := p.(*net.UDPConn)
	if _, _, err := u.WriteMsgUDP([]byte("via-go-msg"), nil, to); err != nil {
		fmt.Printf("udp error writemsg %v\n", err)
		return
	}
	oob := make([]byte, 64)
	n, _, _, src, err := u.ReadMsgUDP(buf, oob)
	if err != nil {
		fmt.Printf("udp error readmsg %v\n", err)
		return
	}
	fmt.Printf("udp msg %s %s\n", buf[:n], src)
}

// sockopts sets and reads back options on c; it returns what each call answered.
func sockopts(c *net.TCPConn) string {
	out := fmt.Sprintf("SetNoDelay(false)=%v SetKeepAlive(true)=%v SetKeepAlivePeriod(20s)=%v",
		c.SetNoDelay(false), c.SetKeepAlive(true), c.SetKeepAlivePeriod(20*time.Second))
	raw, err := c.SyscallConn()
	if err != nil {
		return out + fmt.Sprintf(" SyscallConn=%v", err)
	}
	var nodelay, idle, domain, tos, ttl int
	var nerr, kerr, derr, ierr, toserr, ttlerr error
	cerr := raw.Control(func(fd uintptr) {
		nodelay, nerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
		idle, kerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		domain, derr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_DOMAIN)
		ierr = tcpInfo(fd)
		tos, toserr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TOS)
		ttl, ttlerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL)
	})
	return out + fmt.Sprintf(" Control=%v TCP_NODELAY=%d/%v TCP_KEEPIDLE=%d/%v SO_DOMAIN=%d/%v TCP_INFO=%v IP_TOS=%d/%v IP_TTL=%d/%v",
		cerr, nodelay, nerr, idle, kerr, domain, derr, ierr, tos, toserr, ttl, ttlerr)
}

// tcpInfo reads TCP_INFO into a buffer larger than struct tcp_info (the standard library has
// no wrapper for it): the error, if any.
func tcpInfo(fd uintptr) error {
	var buf [512]byte
	n := uint32(len(buf))
	_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// serve listens on tcp4 port (":port"), prints "listening", takes one connection, reads it to
// its end, prints "peer <RemoteAddr>", answers "go-served" and exits.
func serve(port string) {
	l, err := net.Listen("tcp4", ":"+port)
	if err != nil {
		fmt.Printf("serve error listen %v\n", err)
		os.Exit(2)
	}
	fmt.Println("listening")
	c, err := l.Accept()
	if err != nil {
		fmt.Printf("serve error accept %v\n", err)
		os.Exit(3)
	}
	if _, err := io.ReadAll(c); err != nil {
		fmt.Printf("serve error read %v\n", err)
	}
	fmt.Printf("peer %s\n", c.RemoteAddr())
	fmt.Fprintln(c, "go-served")
	c.Close()
}
