#!/bin/sh
# bench/attention_ab.sh [BASE] [REPS] — the attention op A/B (bench/attention_ab.c): BASE's
# src/models/nn/attention.c (default 1a363c2) with its symbols renamed old_*, against this tree's,
# linked into one binary with build/ (build it first). Prints a table of median CPU ms.
set -e
base=${1:-1a363c2}
reps=${2:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$root" show "$base:src/models/nn/attention.c" | sed 's/ss_attention_/old_attention_/g' \
  >"$tmp/old_attention.c"
# the forward prototypes of this tree's attention.h, renamed (the old file calls them in order)
sed -n '/^void ss_attention_forward/,/;$/p' "$root/src/models/nn/attention.h" |
  sed 's/ss_attention_/old_attention_/g' >"$tmp/old_attention.h"
gcc -O2 -I"$root/src" -I"$root/include" -include "$root/src/models/nn/attention.h" \
  -include "$tmp/old_attention.h" -c "$tmp/old_attention.c" -o "$tmp/old.o" -w
gcc -O2 -I"$root/src" -I"$root/include" "$root/bench/attention_ab.c" "$tmp/old.o" \
  "$root/build/libss_models.a" "$root/build/libss_core.a" -ldnnl -lopenblas -lgomp -lm -lpthread \
  -luv -ljansson -o "$tmp/attention_ab"
"$tmp/attention_ab" "$reps"
