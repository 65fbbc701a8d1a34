#!/usr/bin/env python3
"""Memory cost of idle connections: open N HTTP/2 connections (client preface + SETTINGS, as a
gRPC client does on connect), hold them open, and report the server's RSS growth.

usage: idle_conns.py PORT SERVER_PID [N=10000]
"""
import resource
import socket
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rss_kb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.2)
    before = rss_kb(pid)
    socks = []
    t0 = time.time()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(PREFACE)
        socks.append(s)
    time.sleep(1.0)
    after = rss_kb(pid)
    threads = [l for l in open("/proc/%d/status" % pid) if l.startswith("Threads:")][0].split()[1]
    print("%d idle HTTP/2 connections: server RSS %.1f MB -> %.1f MB (+%.1f MB, %.1f KB each), "
          "threads %s, opened in %.1f s"
          % (n, before / 1024, after / 1024, (after - before) / 1024, (after - before) / n, threads,
             time.time() - t0))
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
