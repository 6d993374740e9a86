#!/usr/bin/env python3
"""IPv6-only services of the test world: TCP echo, UDP echo and HTTP, on every world address.

Runs inside the `world` namespace (started by the testworld crate). Every socket is AF_INET6 with
IPV6_V6ONLY set, so nothing here can speak IPv4. Prints "ready" once all sockets are bound.
"""
import argparse
import http.server
import socket
import socketserver
import sys
import threading


class V6Tcp(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class V6Http(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        # Half-close seen: finish our side too, so the peer sees EOF after the echo.
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def udp_echo(port):
    """Echoes each datagram from the address it was sent to (IPV6_PKTINFO), as a real server on
    a multi-address host must, or the client would see replies from a stranger."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    sock.bind(("::", port))
    def loop():
        while True:
            data, anc, _flags, peer = sock.recvmsg(65536, socket.CMSG_SPACE(20))
            reply_anc = [(lvl, typ, d) for (lvl, typ, d) in anc
                         if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO]
            sock.sendmsg([data], reply_anc, 0, peer)
    threading.Thread(target=loop, daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--echo-port", type=int, default=7)
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--root", required=True, help="directory served over HTTP")
    a = p.parse_args()

    echo = V6Tcp(("::", a.echo_port), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    udp_echo(a.echo_port)

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=a.root, **kw)

        def log_message(self, fmt, *args):
            sys.stderr.write("http %s %s\n" % (self.client_address[0], fmt % args))

    web = V6Http(("::", a.http_port), Files)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
