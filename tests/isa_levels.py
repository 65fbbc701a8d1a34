#!/usr/bin/env python3
"""isa_levels.py — the oneDNN ISA levels this CPU offers, for running compute tests under each.

oneDNN picks its kernels by CPU feature; ONEDNN_MAX_CPU_ISA caps it at a lower level, so one
machine can exercise every level it has (an AVX-512 machine also runs the AVX2 kernels). The
levels, lowest first, with the /proc/cpuinfo flags each needs:

  AVX2              avx2 fma                          (oneDNN gemm:jit; OpenBLAS for large products)
  AVX512_CORE       avx512f avx512bw avx512vl avx512dq (brgemm kernels)
  AVX512_CORE_VNNI  + avx512_vnni
  AVX512_CORE_BF16  + avx512_bf16
  AVX512_CORE_AMX   + amx_tile amx_bf16 amx_int8

levels() lists [(name, offered)] for all of them; "native" (no cap) is always run as well.

As a command: isa_levels.py CMD [ARGS...] runs CMD once natively and once capped at each level
the CPU offers below its own top level, prints which levels were exercised and which were not
(the CPU lacks them), and exits non-zero if any run failed.
"""
import os
import subprocess
import sys

LEVELS = [
    ("AVX2", {"avx2", "fma"}),
    ("AVX512_CORE", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("AVX512_CORE_VNNI", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}),
    ("AVX512_CORE_BF16", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                          "avx512_bf16"}),
    ("AVX512_CORE_AMX", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                         "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}),
]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def levels():
    """[(name, offered by this CPU)], lowest first."""
    flags = cpu_flags()
    return [(name, need <= flags) for name, need in LEVELS]


def caps():
    """The ISA caps to run under: None (native, the CPU's top level) and every offered level
    below the top one (capping at the top level is the native run again)."""
    offered = [name for name, ok in levels() if ok]
    return [None] + offered[:-1]


def summary(ran):
    """One line naming the levels exercised (ran: the caps run, None = native) and those not."""
    offered = [name for name, ok in levels() if ok]
    missing = [name for name, ok in levels() if not ok]
    top = offered[-1] if offered else "below AVX2"
    done = ["native (%s)" % top if c is None else c for c in ran]
    line = "ISA levels exercised: %s" % ", ".join(done)
    if missing:
        line += "; NOT exercised (this CPU lacks them): %s" % ", ".join(missing)
    return line


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    failed = []
    ran = []
    for cap in caps():
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if cap:
            env["ONEDNN_MAX_CPU_ISA"] = cap
        label = cap or "native"
        print("=== %s under ONEDNN_MAX_CPU_ISA=%s" % (os.path.basename(argv[0]), label), flush=True)
        rc = subprocess.call(argv, env=env)
        ran.append(cap)
        if rc != 0:
            failed.append("%s (rc %d)" % (label, rc))
    print(summary(ran), flush=True)
    if failed:
        print("failed under: %s" % ", ".join(failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
