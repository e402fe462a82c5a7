# Process helpers shared by run-load.sh and run-mesh.sh (sourced, not run). The sourcing script
# sets LOG_PREFIX and WORK (its output directory, where each process logs to NAME.log), and
# records each process it starts in PIDS[NAME].

log() { echo "$LOG_PREFIX: $*" >&2; }
die() { log "error: $*"; exit 1; }

declare -A PIDS=()

# stop_proc NAME: TERM, up to 5 s to exit, then KILL.
stop_proc() {
  local name=$1 pid=${PIDS[$1]:-}
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}

cleanup() {
  local name
  for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
  for name in "${!PIDS[@]}"; do stop_proc "$name"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_ok URL [PORT]: the URL answers 2xx (with curl); without curl, PORT is open.
http_ok() {
  if command -v curl >/dev/null; then curl -sf -o /dev/null --max-time 1 "$1"; else port_open "$2"; fi
}

# wait_ready NAME CHECK...: polls CHECK until it succeeds, the process dies, or 15 s pass.
wait_ready() {
  local name=$1; shift
  local deadline=$((SECONDS + 15))
  until "$@"; do
    if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
      tail -n 20 "$WORK/$name.log" >&2 || true
      unset "PIDS[$name]"
      die "$name exited during start-up (log above, full log in $WORK/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$WORK/$name.log" >&2 || true
      die "$name did not become ready within 15 s (${*}; full log in $WORK/$name.log)"
    fi
    sleep 0.05
  done
}
