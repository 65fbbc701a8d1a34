#!/usr/bin/env bash
# Every C file git tracks is formatted as .clang-format says (clang-format from Debian 12, 14.x).
# Prints the files that differ and exits 1 if any does; `make format` rewrites them.
# usage: scripts/check_format.sh
set -uo pipefail
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || { echo "check_format: clang-format is not installed"; exit 1; }
bad=0
while IFS= read -r f; do
  if ! clang-format --dry-run --Werror "$f" > /dev/null 2>&1; then
    echo "differs from .clang-format: $f"
    bad=$((bad + 1))
  fi
done < <(git ls-files '*.c' '*.h')
n=$(git ls-files '*.c' '*.h' | wc -l)
echo "check_format: $((n - bad)) of $n C files formatted ($(clang-format --version | head -1))"
[ "$bad" -eq 0 ]
