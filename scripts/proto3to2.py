#!/usr/bin/env python3
"""Rewrite a proto3 file as the equivalent proto2 file for protoc-c 1.4.1.

Debian 12's protoc-c predates proto3 `optional` (presence). proto2 expresses the same wire
contract: every singular field gets `optional` (with has_ flags for scalars, NULL for absent
strings/messages), repeated scalars are marked [packed = true] as proto3 packs them by default.
Field numbers, names and types are untouched, so the bytes on the wire are the same.
Usage: proto3to2.py IN.proto OUT.proto
"""
import re
import sys

SCALARS = {"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
           "fixed32", "fixed64", "sfixed32", "sfixed64", "bool"}
field = re.compile(r"^(\s*)(optional\s+|repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;(.*)$")

out = []
for line in open(sys.argv[1]):
    s = line.rstrip("\n")
    if re.match(r'^\s*syntax\s*=\s*"proto3"\s*;', s):
        out.append('syntax = "proto2";')
        continue
    m = field.match(s)
    if m and not s.lstrip().startswith(("map<", "rpc ", "option ")) and m.group(3) not in ("rpc",):
        indent, label, typ, name, num, rest = m.groups()
        label = (label or "").strip()
        if label == "repeated":
            opt = " [packed = true]" if typ in SCALARS else ""
            s = f"{indent}repeated {typ} {name} = {num}{opt};{rest}"
        else:
            s = f"{indent}optional {typ} {name} = {num};{rest}"
    out.append(s)
open(sys.argv[2], "w").write("\n".join(out) + "\n")
