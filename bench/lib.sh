# bench/lib.sh — shared by the bench scripts (source it): start a server and wait for its
# `listening on HOST:PORT` line, stop it. Needs LOGDIR set; sets SRV_PID and PORT.

start() { # name cmd...
  local name=$1; shift
  local log="$LOGDIR/$name.log"
  "$@" > "$log" 2>&1 &
  SRV_PID=$!
  for _ in $(seq 1 600); do
    if grep -qE "listening on [0-9.]+:[0-9]+" "$log"; then
      PORT=$(grep -oE "listening on [0-9.]+:[0-9]+" "$log" | head -1 | sed 's/.*://')
      return 0
    fi
    if ! kill -0 "$SRV_PID" 2>/dev/null; then echo "$name failed to start:"; cat "$log"; exit 1; fi
    sleep 0.1
  done
  echo "$name did not start"; cat "$log"; exit 1
}

stop() {
  if [ -n "${SRV_PID:-}" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
  fi
}
