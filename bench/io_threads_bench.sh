#!/bin/bash
# bench/io_threads_bench.sh: tiny identity calls ([1] float32, 64 in flight over 8 connections,
# 3 s per run) against splitserve with --io-threads 1 and 2, plaintext and TLS, alternating runs
# so a noisy machine hits every row alike. Prints QPS and the server's CPU time per call.
# BASE=DIR/bin (optional): the same rows for another build (e.g. an older commit) alternated in.
#   bash bench/io_threads_bench.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-build/bin}
BASE=${BASE:-}
ROUNDS=${1:-2}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1" > /dev/null 2>&1
TLS=(--tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem")
run() { # label bindir server-args...
  local label=$1 bin=$2
  shift 2
  "$bin/splitserve" --listen 127.0.0.1:0 --workers 1 "$@" > "$TMP/srv.log" 2>&1 &
  local pid=$! port=""
  for _ in $(seq 100); do
    port=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$TMP/srv.log" | grep -oE '[0-9]+$' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  local extra=()
  [[ " $* " == *" --tls-cert "* ]] && extra=(--tls-ca "$TMP/cert.pem")
  local out
  out=$("$NEW/splitserve-bench" --addr "127.0.0.1:$port" --model identity --shape 1 \
    --concurrency 64 --connections 8 --duration 3 --server-pid "$pid" "${extra[@]}" 2>&1)
  kill -INT "$pid"
  wait "$pid" 2> /dev/null || true
  echo "$label $(echo "$out" | grep -oE 'QPS [0-9.]+|\([0-9.]+ us/req\)' | head -2 | tr '\n' ' ')"
}
for _ in $(seq "$ROUNDS"); do
  [ -n "$BASE" ] && run "base  io1      " "$BASE"
  run "new   io1      " "$NEW"
  run "new   io2      " "$NEW" --io-threads 2
  [ -n "$BASE" ] && run "base  io1 tls  " "$BASE" "${TLS[@]}"
  run "new   io1 tls  " "$NEW" "${TLS[@]}"
  run "new   io2 tls  " "$NEW" --io-threads 2 "${TLS[@]}"
done
