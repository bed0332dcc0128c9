#!/usr/bin/env python3
"""Slowloris against a fresh `gantry dev` with its default limits: N connections from one
source each send half a request head and keep it open. Prints how many the API admitted (the
rest were closed on accept), how many it still holds after the header timeout, and whether a
signed request from another source address was answered meanwhile.

    sudo .venv/bin/python scripts/try-slowloris.py [--connections 3000]
"""
import argparse
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import conftest  # noqa: E402


def still_open(s):
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=3000)
    a = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (a.connections + 1024, a.connections + 1024))
    g = conftest.Gantry(instance=41)
    try:
        g.start()
        time.sleep(11)  # the start's own kept-alive connections idle out
        began = time.monotonic()
        conns = []
        for _ in range(a.connections):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            try:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                pass
            conns.append(s)
        time.sleep(1)
        admitted = sum(still_open(s) for s in conns)
        other = g.client("ecs")  # from 127.0.0.1 too: counted against the same source
        try:
            other.list_clusters()
            served = "answered"
        except Exception as e:  # noqa: BLE001
            served = f"refused ({type(e).__name__})"
        probe = socket.create_connection(("127.0.0.1", g.port), timeout=5, source_address=("127.0.0.2", 0))
        probe.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        other_source = probe.recv(4096).split(b"\r\n", 1)[0].decode()
        time.sleep(max(0.0, 12 - (time.monotonic() - began)))
        held = sum(still_open(s) for s in conns)
        print(f"{a.connections} half-header connections from 127.0.0.1: {admitted} admitted, "
              f"{a.connections - admitted} closed on accept")
        print(f"meanwhile: a request from 127.0.0.1 {served}; from 127.0.0.2: {other_source!r}")
        print(f"after {time.monotonic() - began:.1f} s: {held} still held")
        for s in conns:
            s.close()
    finally:
        g.cleanup()


if __name__ == "__main__":
    main()
