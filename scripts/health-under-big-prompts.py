#!/usr/bin/env python3
"""/health latency while clients flood `ferroq serve` with huge prompts (loopback only).

Usage: python3 scripts/health-under-big-prompts.py HOST:PORT [CLIENTS] [PROMPT_MB] [SECONDS]
Each client posts a PROMPT_MB prompt over and over (the server tokenizes it, then refuses it
as longer than the context); meanwhile /health is polled and its latency printed. Tokenizing
on the async workers would stall /health; on the blocking pool it should not.
"""
import http.client
import json
import sys
import threading
import time

addr = sys.argv[1]
clients = int(sys.argv[2]) if len(sys.argv) > 2 else 8
mb = float(sys.argv[3]) if len(sys.argv) > 3 else 1.9
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 20
host, port = addr.rsplit(":", 1)
body = json.dumps({"prompt": "word " * int(mb * 1e6 / 5), "max_tokens": 1}).encode()
stop = time.monotonic() + seconds
codes = {}
lock = threading.Lock()


def flood():
    while time.monotonic() < stop:
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        with lock:
            codes[r.status] = codes.get(r.status, 0) + 1
        c.close()


threads = [threading.Thread(target=flood) for _ in range(clients)]
for t in threads:
    t.start()
lat = []
while time.monotonic() < stop:
    t0 = time.monotonic()
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    c.request("GET", "/health")
    c.getresponse().read()
    c.close()
    lat.append(time.monotonic() - t0)
    time.sleep(0.05)
for t in threads:
    t.join()
lat.sort()
print(f"{clients} clients x {mb} MB prompts for {seconds:.0f}s: responses {codes}")
print(f"/health: {len(lat)} polls, p50 {lat[len(lat)//2]*1e3:.1f} ms, "
      f"p99 {lat[int(len(lat)*0.99)]*1e3:.1f} ms, max {lat[-1]*1e3:.1f} ms")
