#!/usr/bin/python3
"""The layering rules of docs/architecture.md, checked on the source tree (ctest: unit.layers).

1. The folder-level include graph of src/ has no cycle.
2. Each folder includes only the folders it is allowed to (the table below): in particular the
   transport (src/grpc) includes nothing from service/, models/ or client/, and core/ includes
   no other layer.
3. tools/*.c include only public headers (include/), their own tools/ headers and the
   generated wire-contract header (compute_service.pb-c.h).

Usage: check_layers.py REPO_ROOT   (prints the graph; exit 1 with the reasons on a violation)
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, "src")

# folder -> folders it may include ("." is src/ itself: the composition root)
ALLOWED = {
    "core": set(),
    "loop": {"core"},
    "grpc": {"core", "loop"},
    "client": {"core", "grpc"},
    "http": {"core"},
    "models": {"core", "models/nn", "models/nn/backend"},
    "models/nn": {"core"},
    "models/nn/backend": {"core", "models/nn"},
    "service": {"core", "loop", "grpc", "models", "models/nn", "models/nn/backend"},
    ".": {"core", "loop", "grpc", "http", "models", "models/nn", "models/nn/backend", "service"},
}
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources(top):
    for d, _, fs in os.walk(top):
        for f in sorted(fs):
            if f.endswith((".c", ".h")):
                yield os.path.join(d, f)


def folder_of(path):
    return os.path.relpath(os.path.dirname(path), SRC)


def main():
    problems = []
    files = list(sources(SRC))
    by_rel = {os.path.relpath(p, SRC): p for p in files}
    edges = {}
    for p in files:
        a = folder_of(p)
        for inc in INCLUDE_RE.findall(open(p, errors="replace").read()):
            target = by_rel.get(inc)
            if target is None:
                local = os.path.join(os.path.dirname(p), inc)
                target = local if os.path.exists(local) else None
            if target is None:
                continue  # public header (include/) or generated (build/gen)
            b = folder_of(target)
            if a == b:
                continue
            edges.setdefault((a, b), []).append(os.path.relpath(p, SRC))
            if a not in ALLOWED:
                problems.append("folder src/%s is not in the layer table (tests/check_layers.py)" % a)
            elif b not in ALLOWED[a]:
                problems.append("src/%s includes %s (src/%s may include only: %s)"
                                % (os.path.relpath(p, SRC), inc, a,
                                   ", ".join(sorted(ALLOWED[a])) or "nothing"))
    # cycle search on the folder graph
    adj = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
    state, cycle = {}, []

    def dfs(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(adj.get(n, ())):
            if cycle:
                return
            if state.get(m) == 1:
                cycle.extend(stack[stack.index(m):] + [m])
                return
            if not state.get(m):
                dfs(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(adj):
        if not state.get(n) and not cycle:
            dfs(n, [])
    if cycle:
        problems.append("folder cycle: " + " -> ".join(cycle))
    # tools: public headers only
    tools = os.path.join(ROOT, "tools")
    for p in sources(tools):
        for inc in INCLUDE_RE.findall(open(p, errors="replace").read()):
            ok = (os.path.exists(os.path.join(ROOT, "include", inc)) or
                  os.path.exists(os.path.join(tools, inc)) or inc == "compute_service.pb-c.h")
            if not ok:
                problems.append("tools/%s includes %s, which is not a public header"
                                % (os.path.relpath(p, tools), inc))
    for (a, b), who in sorted(edges.items()):
        print("  %-10s -> %-10s (%d includes)" % (a, b, len(who)))
    if problems:
        for pr in sorted(set(problems)):
            print("LAYER VIOLATION: " + pr)
        print("0 passed, 1 failed")
        return 1
    print("layers: %d folders, %d edges, acyclic; transport includes no service/model header; "
          "tools use public headers only" % (len({a for a, _ in edges} | {b for _, b in edges}),
                                              len(edges)))
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
