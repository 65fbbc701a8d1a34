#!/usr/bin/env python3
"""Turn bench/results/latest.csv (rows from splitserve-bench --csv) into latest.md and a plot.

usage: report.py CSV MD PNG
The seeds' published numbers (../shared/seeds/002_*.txt: Python sync / gevent POOL_SIZE 64 /
POOL_SIZE 128 / asyncio, a handler waiting 0.1 s) are printed beside ours for the same N.
"""
import csv
import platform
import subprocess
import sys
import time
from collections import OrderedDict

SEED = {  # N -> (mean latency s, QPS), as published in the seed document
    "sync": {1: (0.1016, 9.8339), 2: (0.2013, 9.9222), 4: (0.4025, 9.9000), 8: (0.8084, 9.8098),
             16: (1.6095, 9.7580), 32: (3.2177, 9.5742)},
    "pool 64": {1: (0.1081, 9.1960), 2: (0.1085, 18.3588), 4: (0.1081, 36.6323), 8: (0.1079, 72.5699),
                16: (0.1079, 143.4769), 32: (0.1085, 281.1915), 64: (0.1085, 531.2040),
                128: (0.2442, 450.4373), 256: (0.4258, 482.1710), 512: (0.6617, 464.0581)},
    "pool 128": {1: (0.1090, 9.1315), 2: (0.1087, 18.3250), 4: (0.1077, 36.7102), 8: (0.1078, 72.6145),
                 16: (0.1079, 143.5335), 32: (0.1081, 280.4522), 64: (0.1074, 536.2712),
                 128: (0.1095, 965.2285), 256: (0.1976, 882.8355), 512: (0.2933, 904.9475)},
    "unbounded": {1: (0.1121, 8.9104), 2: (0.1135, 17.5394), 4: (0.1130, 34.9997), 8: (0.1146, 68.2981),
                  16: (0.1153, 133.1972), 32: (0.1091, 271.9962), 64: (0.1116, 481.6314),
                  128: (0.1073, 987.7698), 256: (0.1168, 1373.7313), 512: (0.1847, 1532.6284)},
}
SEED_NAME = {"sync": "Python sync server", "pool 64": "gevent, POOL_SIZE 64",
             "pool 128": "gevent, POOL_SIZE 128", "unbounded": "asyncio (no pool)"}


def load(path):
    groups = OrderedDict()
    with open(path) as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["label"], []).append(row)
    return groups


def fnum(v, fmt="%.1f"):
    try:
        return fmt % float(v)
    except (TypeError, ValueError):
        return "-"


def seed_key(label):
    for k in ("sync", "pool 64", "pool 128", "unbounded"):
        if label.startswith("splitserve " + k):
            return k
    return None


def table(rows, seed=None):
    head = "| N | QPS | mean ms | p50 ms | p99 ms | max ms | errors | server threads | server CPU s / 1k req |"
    if seed:
        head = "| N | seed mean s | seed QPS " + head[4:]
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        n = int(r["concurrency"])
        cells = [str(n)]
        if seed:
            s = SEED[seed].get(n)
            cells += [("%.4f" % s[0]) if s else "-", ("%.1f" % s[1]) if s else "-"]
        cells += [fnum(r["qps"]), fnum(r["mean_ms"]), fnum(r["p50_ms"]), fnum(r["p99_ms"]),
                  fnum(r["max_ms"]), r["errors"], r["threads"] or "-", fnum(r["cpu_s_per_1k"], "%.3f")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(groups, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing (python3-matplotlib): no plot")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    for label, rows in groups.items():
        if "sleep" not in label and "spin" not in label:
            continue
        n = [int(r["concurrency"]) for r in rows]
        a.plot(n, [float(r["qps"]) for r in rows], marker="o", label=label)
        b.plot(n, [float(r["p99_ms"]) for r in rows], marker="o", label=label)
    for key, name in SEED_NAME.items():
        pts = sorted(SEED[key].items())
        a.plot([p[0] for p in pts], [p[1][1] for p in pts], ls="--", alpha=0.5, label="seed: " + name)
    ideal = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 4096]
    a.plot(ideal, [x / 0.1 for x in ideal], ls=":", color="gray", label="ideal N / 0.1 s")
    for ax, title, yl in ((a, "QPS vs concurrency (handler waits 100 ms)", "QPS"),
                          (b, "p99 latency vs concurrency", "p99 ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent calls in flight")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    return True


def main():
    csv_path, md_path, png_path = sys.argv[1:4]
    groups = load(csv_path)
    cpu = ""
    try:
        cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except Exception:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    md = ["# splitserve benchmark results", "",
          "Produced by `make bench` (bench/run_bench.sh) on %s, commit %s, %s, %d cores (%s)."
          % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit or "?", platform.machine(),
             __import__("os").cpu_count(), cpu),
          "Load generator: `splitserve-bench` (one process, one loop thread, closed loop) on the same machine.",
          "Thread budget: splitserve `--workers 2 --intra-op-threads 1` (1 loop + 2 workers); the Python",
          "peers run torch with 1 intra-op thread; the sync peer uses ThreadPoolExecutor(10) for the seeds'",
          "table and 2 workers (like splitserve) for the mlp rows.", "",
          "![QPS and p99 against concurrency](latest.png)", ""]
    sect = None
    for label, rows in groups.items():
        s = "1" if ("sleep" in label or "spin" in label) else ("2" if "identity" in label else "3")
        if s != sect:
            sect = s
            md += ["", {"1": "## 1. The seeds' table: a handler that waits 100 ms",
                        "2": "## 2. Raw RPC cost: identity",
                        "3": "## 3. Model compute: mlp 768->768->768 on [1,10,768]"}[s], ""]
        key = seed_key(label)
        md += ["### " + label + ((" (seed: " + SEED_NAME[key] + ")") if key else ""), "",
               table(rows, key), ""]
    if plot(groups, png_path):
        print("report: wrote", png_path)
    open(md_path, "w").write("\n".join(md) + "\n")
    print("report: wrote", md_path)


if __name__ == "__main__":
    main()
