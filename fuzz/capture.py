#!/usr/bin/python3
"""Capture proxy for NBD seed corpora: listens on a Unix socket (or TCP), forwards each
connection to the server, and saves the bytes each client sent (one file per connection).

usage: capture.py LISTEN SERVER OUT_DIR PREFIX
LISTEN and SERVER are Unix socket paths, or tcp:HOST:PORT (vm-tests/run.sh with VM_CAPTURE:
the guest's kernel client reaches the server over TCP). Runs until killed; files are written
as OUT_DIR/PREFIX-N (N = 1, 2, ... in order of accept) as each connection closes."""
import os
import socket
import sys
import threading

listen_path, server_path, out_dir, prefix = sys.argv[1:5]


def address(a):
    """(family, address) of a Unix socket path or tcp:HOST:PORT."""
    if a.startswith("tcp:"):
        host, port = a[4:].rsplit(":", 1)
        return socket.AF_INET, (host, int(port))
    return socket.AF_UNIX, a


def pump(src, dst, sink):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if sink is not None:
                sink.append(b)
            dst.sendall(b)
    except OSError:
        pass
    for s in (dst,):
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(client, n):
    family, addr = address(server_path)
    server = socket.socket(family, socket.SOCK_STREAM)
    server.connect(addr)
    if family == socket.AF_INET:
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = []
    up = threading.Thread(target=pump, args=(client, server, sent))
    down = threading.Thread(target=pump, args=(server, client, None))
    up.start()
    down.start()
    up.join()
    down.join()
    # The file before the sockets close: once they are closed, the file is there.
    path = os.path.join(out_dir, "%s-%d" % (prefix, n))
    with open(path + ".tmp", "wb") as f:
        f.write(b"".join(sent))
    os.rename(path + ".tmp", path)
    client.close()
    server.close()


family, addr = address(listen_path)
ls = socket.socket(family, socket.SOCK_STREAM)
if family == socket.AF_UNIX:
    try:
        os.unlink(addr)
    except FileNotFoundError:
        pass
else:
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(addr)
ls.listen(16)
n = 0
while True:
    c, _ = ls.accept()
    if family == socket.AF_INET:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n += 1
    threading.Thread(target=handle, args=(c, n), daemon=True).start()
