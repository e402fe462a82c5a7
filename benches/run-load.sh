#!/usr/bin/env bash
# End-to-end load: meshgate against rumqttd, mosquitto and nats-server on this machine.
#
# Installs the peers that are missing, builds `loadgen` in release, starts every broker on its
# own loopback port, runs every workload against every broker with the repetitions interleaved
# (A B C D, A B C D, ...; brokers restarted for each repetition, and after a failed run), stops
# the brokers and prints markdown tables of medians and same-run ratios. Everything it starts is
# stopped on exit. See docs/BENCHMARKS.md, "End-to-end load".
#
#   benches/run-load.sh            # 3 repetitions, 5 s per run (~11 min on 2 cores)
#   benches/run-load.sh --quick    # 1 repetition, 1 s per run, 10k subscriptions: a smoke test
#
# Options:
#   --quick               1 repetition, 1 s runs, 0.2 s warm-up, 10,000 subscriptions
#   --reps N              repetitions (default 3)
#   --duration S          measured seconds per run (default 5)
#   --brokers LIST        comma-separated subset of meshgate,rumqttd,mosquitto,nats-server
#   --workloads LIST      comma-separated subset of one-to-one,fan-out,many-subs,latency
#   --out DIR             where results go (default target/load/DATE-TIME)
#   --no-install          fail instead of installing missing peers
#   --allow-failures      exit 0 even if some runs failed (they show as "failed" in the table)
#
# Environment: CARGO_TARGET_DIR (where loadgen is built), MESHGATE_BIN (default
# target/release/meshgate), LOAD_PORT_BASE (default 18830; ports BASE+1 .. BASE+7 are used).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=3
DURATION=5
WARMUP=0.5
SUBSCRIPTIONS=100000
SUBSCRIBE_TIMEOUT=120
BROKERS=meshgate,rumqttd,mosquitto,nats-server
WORKLOADS=one-to-one,fan-out,latency,many-subs
OUT=""
INSTALL=1
ALLOW_FAILURES=0
ARGS="$*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1; DURATION=1; WARMUP=0.2; SUBSCRIPTIONS=10000; SUBSCRIBE_TIMEOUT=60 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --brokers) BROKERS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --allow-failures) ALLOW_FAILURES=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-load: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

PORT_BASE=${LOAD_PORT_BASE:-18830}
PORT_MOSQUITTO=$((PORT_BASE + 1))
PORT_RUMQTTD=$((PORT_BASE + 2))
PORT_NATS=$((PORT_BASE + 3))
PORT_NATS_HTTP=$((PORT_BASE + 4))
PORT_MESHGATE_MQTT=$((PORT_BASE + 5))
PORT_MESHGATE_HTTP=$((PORT_BASE + 6))
PORT_MESHGATE_MESH=$((PORT_BASE + 7))
MESHGATE_BIN=${MESHGATE_BIN:-$ROOT/target/release/meshgate}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/release/loadgen
export PATH="$HOME/.cargo/bin:$PATH"

LOG_PREFIX=run-load
WORK=""
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# ---------------------------------------------------------------------------------------------
# Brokers
ports_of() {
  case "$1" in
    mosquitto) echo "$PORT_MOSQUITTO" ;;
    rumqttd) echo "$PORT_RUMQTTD" ;;
    nats-server) echo "$PORT_NATS $PORT_NATS_HTTP" ;;
    meshgate) echo "$PORT_MESHGATE_MQTT $PORT_MESHGATE_HTTP" ;;
  esac
}

start_broker() {
  local name=$1 port
  # Readiness is "the port answers": make sure nobody else answers on it already.
  for port in $(ports_of "$name"); do
    ! port_open "$port" || die "port $port for $name is already in use (set LOAD_PORT_BASE to move all ports)"
  done
  case "$name" in
    mosquitto)
      cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT_MOSQUITTO 127.0.0.1
allow_anonymous true
# QoS 0 to online clients is queued in memory; do not cap it below the harness's window.
max_queued_messages 100000
EOF
      mosquitto -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" port_open "$PORT_MOSQUITTO" ;;
    rumqttd)
      cat >"$WORK/rumqttd.toml" <<EOF
# rumqttd 0.20: only the v4 (MQTT 3.1.1) listener; no v5, websocket, console or prometheus.
id = 0

[router]
max_connections = 10010
# Messages the router hands a connection per scheduling step (its default is 200).
max_outgoing_packet_count = 200
# In-memory commit log per filter: 10 segments of 100 MB, so that no reader falls off the log.
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT_RUMQTTD"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
EOF
      rumqttd -q -c "$WORK/rumqttd.toml" >>"$WORK/rumqttd.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" port_open "$PORT_RUMQTTD" ;;
    nats-server)
      cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$PORT_NATS
http: 127.0.0.1:$PORT_NATS_HTTP
EOF
      nats-server -c "$WORK/nats.conf" >>"$WORK/nats-server.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" port_open "$PORT_NATS"
      wait_ready "$name" http_ok "http://127.0.0.1:$PORT_NATS_HTTP/healthz" "$PORT_NATS_HTTP" ;;
    meshgate)
      mkdir -p "$WORK/meshgate-data"
      "$MESHGATE_BIN" run --mqtt "127.0.0.1:$PORT_MESHGATE_MQTT" --http "127.0.0.1:$PORT_MESHGATE_HTTP" \
        --mesh "127.0.0.1:$PORT_MESHGATE_MESH" --name bench --data-dir "$WORK/meshgate-data" \
        >>"$WORK/meshgate.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" http_ok "http://127.0.0.1:$PORT_MESHGATE_HTTP/healthz" "$PORT_MESHGATE_HTTP"
      wait_ready "$name" port_open "$PORT_MESHGATE_MQTT" ;;
    *) die "unknown broker $name" ;;
  esac
  log "$name ready (pid ${PIDS[$name]})"
}

addr_of() {
  case "$1" in
    mosquitto) echo "127.0.0.1:$PORT_MOSQUITTO" ;;
    rumqttd) echo "127.0.0.1:$PORT_RUMQTTD" ;;
    nats-server) echo "127.0.0.1:$PORT_NATS" ;;
    meshgate) echo "127.0.0.1:$PORT_MESHGATE_MQTT" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Main
install_peers

log "building loadgen (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p meshgate-benches --bin loadgen) \
  || die "building loadgen failed"

OUT=${OUT:-$ROOT/target/load/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$OUT
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
NOTES=()

IFS=, read -r -a WANTED <<<"$BROKERS"
ACTIVE=()
for b in "${WANTED[@]}"; do
  if [[ $b == meshgate ]]; then
    if [[ ! -x $MESHGATE_BIN ]]; then
      NOTES+=("meshgate skipped: $MESHGATE_BIN does not exist (build it with cargo build --release)")
      log "${NOTES[-1]}"
      continue
    fi
    # Run a copy, so that a rebuild during the run cannot mix two versions.
    cp "$MESHGATE_BIN" "$WORK/meshgate"
    NOTES+=("meshgate binary: copy of $MESHGATE_BIN built $(date -u -r "$MESHGATE_BIN" '+%Y-%m-%d %H:%M UTC')")
    MESHGATE_BIN=$WORK/meshgate
  fi
  ACTIVE+=("$b")
done
[[ ${#ACTIVE[@]} -gt 0 ]] || die "no broker to run"

for b in "${ACTIVE[@]}"; do start_broker "$b"; done

# Workload items: name:payload.
ITEMS=()
IFS=, read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do
  case "$w" in
    one-to-one) ITEMS+=(one-to-one:16 one-to-one:128 one-to-one:1024) ;;
    fan-out|latency|many-subs) ITEMS+=("$w:128") ;;
    *) die "unknown workload $w" ;;
  esac
done

LOAD1=$(cut -d' ' -f1 /proc/loadavg)
log "load average before the runs: $LOAD1 (other work on this machine skews the numbers)"
FAILED=0
for rep in $(seq "$REPS"); do
  if [[ $rep -gt 1 ]]; then
    # Fresh brokers for every repetition: some keep state after their clients leave (rumqttd
    # keeps every filter it has seen, and many-subs leaves 100,000 of them).
    for b in "${ACTIVE[@]}"; do stop_proc "$b"; start_broker "$b"; done
  fi
  for item in "${ITEMS[@]}"; do
    workload=${item%%:*}
    payload=${item##*:}
    for b in "${ACTIVE[@]}"; do
      proto=mqtt
      [[ $b == nats-server ]] && proto=nats
      limit=$(awk -v d="$DURATION" -v t="$SUBSCRIBE_TIMEOUT" 'BEGIN { printf "%d", d + t + 60 }')
      err=$WORK/loadgen.err
      if line=$(timeout "$limit" "$LOADGEN" run --proto "$proto" --addr "$(addr_of "$b")" \
        --workload "$workload" --payload "$payload" --duration "$DURATION" --warmup "$WARMUP" \
        --subscriptions "$SUBSCRIPTIONS" --subscribe-timeout "$SUBSCRIBE_TIMEOUT" \
        --broker-pid "${PIDS[$b]}" --label "$b" 2>"$err"); then
        echo "$line" >>"$RESULTS"
        rate=$(grep -o '"delivered_per_s":[0-9.e+]*' <<<"$line" | cut -d: -f2)
        extra=$(grep -o '"p99_us":[0-9.]*' <<<"$line" || true)
        log "rep $rep/$REPS $workload ${payload} B $b: $(printf '%.0f' "$rate") msg/s delivered ${extra}"
      else
        FAILED=$((FAILED + 1))
        msg=$(tail -n 1 "$err" | tr -d '"\\' | tr -cd '[:print:]')
        [[ -n $msg ]] || msg="loadgen timed out or crashed"
        printf '{"label":"%s","workload":"%s","payload_bytes":%s,"subscriptions":%s,"error":"%s"}\n' \
          "$b" "$workload" "$payload" "$([[ $workload == many-subs ]] && echo "$SUBSCRIPTIONS" || echo 1)" \
          "$msg" >>"$RESULTS"
        log "rep $rep/$REPS $workload ${payload} B $b: FAILED: $msg"
        # A broker that failed a run may be wedged (or still chewing on a dead connection's
        # subscriptions): restart it so the next runs start clean.
        log "restarting $b"
        stop_proc "$b"
        start_broker "$b"
      fi
    done
  done
done

for b in "${ACTIVE[@]}"; do stop_proc "$b"; done

versions() {
  local b
  for b in "${ACTIVE[@]}"; do
    case "$b" in
      mosquitto) echo "- mosquitto $(mosquitto -h 2>/dev/null | head -n 1 | grep -o 'version [0-9.]*' | cut -d' ' -f2)" ;;
      rumqttd) echo "- rumqttd $(rumqttd --version | cut -d' ' -f2)" ;;
      nats-server) echo "- nats-server $(nats-server --version | grep -o 'v[0-9][0-9.]*')" ;;
      meshgate) echo "- meshgate $("$MESHGATE_BIN" --version | cut -d' ' -f2)" ;;
    esac
  done
}

{
  echo "## End-to-end load: $(date -u +%Y-%m-%d) on $(nproc) cores, loopback"
  echo
  echo "Command: \`benches/run-load.sh $ARGS\`; $REPS repetition(s) of ${DURATION} s (after ${WARMUP} s warm-up), brokers interleaved; load average before: $LOAD1."
  echo
  versions
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
  [[ ${#NOTES[@]} -eq 0 ]] || echo
  "$LOADGEN" summarize "$RESULTS" --order meshgate,rumqttd,mosquitto,nats-server --baseline meshgate
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results: $RESULTS, summary: $OUT/summary.md"

if [[ $FAILED -gt 0 ]]; then
  log "$FAILED run(s) failed"
  [[ $ALLOW_FAILURES == 1 ]] || exit 2
fi
