#!/usr/bin/python3
"""Capture proxy for NBD seed corpora: listens on a Unix socket, forwards each connection to
the server's socket, and saves the bytes each client sent (one file per connection).

usage: capture.py LISTEN_SOCKET SERVER_SOCKET OUT_DIR PREFIX
Runs until killed; files are written as each connection closes."""
import os
import socket
import sys
import threading

listen_path, server_path, out_dir, prefix = sys.argv[1:5]


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
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.connect(server_path)
    sent = []
    up = threading.Thread(target=pump, args=(client, server, sent))
    down = threading.Thread(target=pump, args=(server, client, None))
    up.start()
    down.start()
    up.join()
    down.join()
    client.close()
    server.close()
    path = os.path.join(out_dir, "%s-%d" % (prefix, n))
    with open(path + ".tmp", "wb") as f:
        f.write(b"".join(sent))
    os.rename(path + ".tmp", path)


try:
    os.unlink(listen_path)
except FileNotFoundError:
    pass
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(listen_path)
ls.listen(16)
n = 0
while True:
    c, _ = ls.accept()
    n += 1
    threading.Thread(target=handle, args=(c, n), daemon=True).start()
