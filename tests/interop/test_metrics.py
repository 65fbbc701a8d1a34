"""Prometheus metrics (--metrics-listen): the text exposition read directly, and Debian's real
`prometheus` scraping it and answering queries through its HTTP API."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

import sslib
from sslib import SC, T, make_req, expect_error

S = None
C = None
MPORT = None
METRICS_RE = re.compile(r"metrics on http://[^:]+:(\d+)/metrics")


def setup():
    global S, C, MPORT
    S = sslib.Server("--workers", "1", "--metrics-listen", "127.0.0.1:0")
    line = S.wait_for_line(METRICS_RE.pattern, timeout=5)
    assert line, "no 'metrics on' line:\n" + S.log
    MPORT = int(METRICS_RE.search(line).group(1))
    C = sslib.connect(S)


def teardown():
    sslib.shutdown(C, S)


def scrape(path="/metrics", method="GET"):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (MPORT, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=T(5)) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def parse(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_exposition_counts_calls():
    x = np.ones((1, 10, 768), np.float32)
    for _ in range(5):
        C.compute(make_req(x, model="mlp"), timeout=T(10))
    for _ in range(2):
        expect_error(lambda: C.compute(make_req(np.ones((1, 3), np.float32), model="mlp"),
                                       timeout=T(5)), SC.INVALID_ARGUMENT)
    expect_error(lambda: C.compute(make_req(x, model="nosuch"), timeout=T(5)), SC.NOT_FOUND)
    C.health(sslib.pb.HealthRequest(), timeout=T(5))
    time.sleep(0.2)  # the calls' release (when the metrics are recorded) follows the answer
    code, ctype, text = scrape()
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4"), (code, ctype)
    m = parse(text)
    assert m['splitserve_requests_total{model="mlp",method="Compute",code="OK"}'] == 5, text
    assert m['splitserve_requests_total{model="mlp",method="Compute",code="INVALID_ARGUMENT"}'] == 2
    assert m['splitserve_requests_total{model="",method="Compute",code="NOT_FOUND"}'] == 1
    assert m['splitserve_requests_total{model="",method="HealthCheck",code="OK"}'] >= 1
    assert m['splitserve_compute_seconds_count{model="mlp",method="Compute"}'] == 5
    assert m['splitserve_queue_seconds_count{model="mlp",method="Compute"}'] == 5
    inf = m['splitserve_request_seconds_bucket{model="mlp",method="Compute",le="+Inf"}']
    assert inf == 7, text
    assert m['splitserve_compute_seconds_sum{model="mlp",method="Compute"}'] > 0
    assert m["splitserve_threads"] == S.threads() == m["splitserve_thread_budget"] == sslib.IO + 1
    assert m["splitserve_connections"] >= 1
    assert m['splitserve_inflight{model="mlp"}'] == 0
    assert m["process_resident_memory_bytes"] > 1e6
    assert any(k.startswith("splitserve_build_info{") for k in m)
    # Cumulative buckets never decrease.
    b = [(float(re.search(r'le="([^"]+)"', k).group(1).replace("+Inf", "inf")), v) for k, v in m.items()
         if k.startswith('splitserve_request_seconds_bucket{model="mlp",method="Compute"')]
    b.sort()
    assert all(b[i][1] <= b[i + 1][1] for i in range(len(b) - 1)), b


def test_other_paths_and_methods():
    assert scrape("/")[0] == 404
    assert scrape("/metrics", method="POST")[0] == 405
    assert scrape("/metrics?x=1")[0] == 200
    # A request head that never ends is bounded (431), and the endpoint keeps serving.
    s = socket.create_connection(("127.0.0.1", MPORT), timeout=T(5))
    s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 10000)
    data = s.recv(200)
    s.close()
    assert data.startswith(b"HTTP/1.1 431"), data
    assert scrape()[0] == 200


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_prometheus_scrapes_it():
    prom = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert os.path.exists(prom), "Debian's prometheus is not installed (scripts/deps.sh installs it)"
    tmp = tempfile.mkdtemp(prefix="ss-prom-")
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                "  - job_name: splitserve\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n"
                % MPORT)
    web = _free_port()
    p = subprocess.Popen([prom, "--config.file", cfg, "--storage.tsdb.path", os.path.join(tmp, "data"),
                          "--web.listen-address", "127.0.0.1:%d" % web],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        q = urllib.parse.urlencode({"query": 'splitserve_requests_total{method="Compute",code="OK"}'})
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (web, q)
        deadline = time.monotonic() + T(60)
        got = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    res = json.loads(r.read().decode())
                if res.get("status") == "success" and res["data"]["result"]:
                    got = res["data"]["result"]
                    break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.5)
        assert got, "prometheus never returned the series"
        vals = {r["metric"]["model"]: float(r["value"][1]) for r in got}
        assert vals.get("mlp", 0) >= 5, got
        # The target is up as Prometheus sees it.
        q = urllib.parse.urlencode({"query": 'up{job="splitserve"}'})
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/query?%s" % (web, q), timeout=5) as r:
            up = json.loads(r.read().decode())["data"]["result"]
        assert up and float(up[0]["value"][1]) == 1.0, up
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_idle_connections_do_not_lock_out_scrapes():
    """Issue 20 (8): 70 idle and 10 half-sent connections used to fill the endpoint's 64 slots
    for 30 s, and every scrape was closed at accept. Now a new connection at the limit closes
    the oldest one still waiting for its request: the scraper gets through."""
    socks = []
    try:
        for i in range(80):
            s = socket.create_connection(("127.0.0.1", MPORT), timeout=T(5))
            if i >= 70:
                s.sendall(b"GET /metr")  # half a request line, never finished
            socks.append(s)
        time.sleep(0.3)  # all of them accepted
        for attempt in range(3):
            code, ctype, body = scrape()
            assert code == 200, (code, body[:200])
            assert "splitserve_" in body
        print("    80 idle / half-sent connections open: 3 scrapes answered 200")
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    sslib.main(globals())
