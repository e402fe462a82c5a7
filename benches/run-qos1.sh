#!/usr/bin/env bash
# Guaranteed delivery on one node: MQTT QoS 1, 1 publisher -> 1 subscriber, 128 B, through
# meshgate with each commit policy of its store (group with the default 1 ms window, group with a
# 0 ms window, always, os), mosquitto with persistence off and on, and rumqttd, in ONE run: brokers interleaved, every repetition on freshly started
# brokers (fresh data directories). The subscriber runs with a clean session and with a
# persistent one (clean session off), each a table of its own. Prints markdown tables of medians
# with same-run ratios to rumqttd and mosquitto. Everything started is stopped on exit. See
# docs/BENCHMARKS.md, "Guaranteed delivery (QoS 1)".
#
#   benches/run-qos1.sh            # 2 repetitions, 5 s per run (~4 min on 2 cores)
#   benches/run-qos1.sh --quick    # 1 repetition, 1 s per run: a smoke test
#
# Options:
#   --quick               1 repetition, 1 s runs, 0.2 s warm-up
#   --reps N              repetitions (default 2)
#   --duration S          measured seconds per run (default 5)
#   --setups LIST         comma-separated subset of meshgate-group,meshgate-group0,
#                         meshgate-always,meshgate-os,mosquitto,mosquitto-persist,rumqttd
#   --sessions LIST       subscriber sessions: clean,persistent (default both)
#   --inflight W          QoS 1 window: unacknowledged publishes of the publisher, and the
#                         broker's QoS 1 deliveries in flight to the subscriber where it can be
#                         set (meshgate mqtt.max_inflight, mosquitto max_inflight_messages;
#                         rumqttd 0.20 has a fixed 100) (default 256)
#   --out DIR             where results go (default target/qos1/DATE-TIME)
#   --no-install          fail instead of installing missing peers
#   --allow-failures      exit 0 even if some runs failed
#
# Environment: CARGO_TARGET_DIR (where loadgen is built), MESHGATE_BIN (default
# target/release/meshgate), QOS1_PORT_BASE (default 18960; ports BASE+1 .. BASE+15 are used).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=2
DURATION=5
WARMUP=0.5
INFLIGHT=256
SETUPS=meshgate-group,meshgate-group0,meshgate-always,meshgate-os,mosquitto,mosquitto-persist,rumqttd
SESSIONS=clean,persistent
OUT=""
INSTALL=1
ALLOW_FAILURES=0
ARGS="$*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1; DURATION=1; WARMUP=0.2 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --setups) SETUPS=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --inflight) INFLIGHT=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --allow-failures) ALLOW_FAILURES=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-qos1: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

B=${QOS1_PORT_BASE:-18960}
MESHGATE_BIN=${MESHGATE_BIN:-$ROOT/target/release/meshgate}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/release/loadgen
export PATH="$HOME/.cargo/bin:$PATH"

LOG_PREFIX=run-qos1
WORK=""
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# MQTT port of each setup; meshgate also uses the next two (HTTP, mesh).
mqtt_port() {
  case "$1" in
    mosquitto) echo $((B + 1)) ;;
    mosquitto-persist) echo $((B + 2)) ;;
    rumqttd) echo $((B + 3)) ;;
    meshgate-group) echo $((B + 4)) ;;
    meshgate-always) echo $((B + 7)) ;;
    meshgate-os) echo $((B + 10)) ;;
    meshgate-group0) echo $((B + 13)) ;;
  esac
}

start_broker() {
  local name=$1 port
  port=$(mqtt_port "$name")
  ! port_open "$port" || die "port $port for $name is already in use (set QOS1_PORT_BASE to move all ports)"
  case "$name" in
    mosquitto|mosquitto-persist)
      local persist=false
      [[ $name == mosquitto-persist ]] && persist=true
      rm -rf "$WORK/$name-db"
      mkdir -p "$WORK/$name-db"
      # Started as root, mosquitto drops to its own user: let it write its database.
      chmod 0777 "$WORK/$name-db"
      cat >"$WORK/$name.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
# QoS 1 deliveries in flight per client: the same window as everyone else (default 20).
max_inflight_messages $INFLIGHT
# Queued for an online or offline client beyond that: do not cap it below the harness's window.
max_queued_messages 100000
# Persistence: the in-memory state is written to mosquitto.db every autosave_interval seconds
# (default 1800) and on exit, not per message.
persistence $persist
persistence_location $WORK/$name-db/
EOF
      mosquitto -c "$WORK/$name.conf" >>"$WORK/$name.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" port_open "$port" ;;
    rumqttd)
      # The same configuration as run-load.sh. rumqttd 0.20 keeps at most 100 QoS 1 deliveries
      # in flight per connection (a constant, MAX_INFLIGHT in router/iobufs.rs);
      # max_inflight_count is how many packets it reads from a connection at a time.
      cat >"$WORK/rumqttd.toml" <<EOF
id = 0

[router]
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
EOF
      rumqttd -q -c "$WORK/rumqttd.toml" >>"$WORK/rumqttd.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" port_open "$port" ;;
    meshgate-*)
      local commit=${name#meshgate-} window=1
      [[ $commit == group0 ]] && commit=group && window=0
      ! port_open $((port + 1)) || die "port $((port + 1)) for $name is already in use"
      rm -rf "$WORK/data-$name"
      MESHGATE_STORE__COMMIT=$commit MESHGATE_STORE__GROUP_COMMIT_MS=$window MESHGATE_MQTT__MAX_INFLIGHT=$INFLIGHT \
        "$MESHGATE_BIN" run --name "$name" --mqtt "127.0.0.1:$port" --http "127.0.0.1:$((port + 1))" \
        --mesh "127.0.0.1:$((port + 2))" --data-dir "$WORK/data-$name" >>"$WORK/$name.log" 2>&1 &
      PIDS[$name]=$!
      wait_ready "$name" http_ok "http://127.0.0.1:$((port + 1))/healthz" $((port + 1))
      wait_ready "$name" port_open "$port" ;;
    *) die "unknown setup $name" ;;
  esac
  log "$name ready (pid ${PIDS[$name]})"
}

# ---------------------------------------------------------------------------------------------
# Main
install_peers

log "building loadgen (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p meshgate-benches --bin loadgen) \
  || die "building loadgen failed"

OUT=${OUT:-$ROOT/target/qos1/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$OUT
NOTES=()

IFS=, read -r -a WANTED <<<"$SETUPS"
IFS=, read -r -a SESS <<<"$SESSIONS"
ACTIVE=()
COPIED=0
for s in "${WANTED[@]}"; do
  [[ -n $(mqtt_port "$s") ]] || die "unknown setup $s"
  if [[ $s == meshgate-* ]]; then
    if [[ $COPIED == 0 ]]; then
      [[ -x $MESHGATE_BIN ]] || die "$MESHGATE_BIN does not exist (build it with cargo build --release --bin meshgate)"
      # Run a copy, so that a rebuild during the run cannot mix two versions.
      cp "$MESHGATE_BIN" "$WORK/meshgate"
      NOTES+=("meshgate $("$WORK/meshgate" --version | cut -d' ' -f2): copy of $MESHGATE_BIN built $(date -u -r "$MESHGATE_BIN" '+%Y-%m-%d %H:%M UTC'); store commit policy per setup (MESHGATE_STORE__COMMIT), group_commit_ms 1 (meshgate-group0: 0), mqtt.max_inflight $INFLIGHT")
      MESHGATE_BIN=$WORK/meshgate
      COPIED=1
    fi
  fi
  ACTIVE+=("$s")
done
for s in clean persistent; do : >"$OUT/results-$s.jsonl"; done

LOAD1=$(cut -d' ' -f1 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
log "load average before the runs: $LOAD1 (other work on this machine skews the numbers)"
FAILED=0
for rep in $(seq "$REPS"); do
  # Fresh brokers (and data directories) for every repetition.
  for s in "${ACTIVE[@]}"; do stop_proc "$s"; start_broker "$s"; done
  for session in "${SESS[@]}"; do
    for s in "${ACTIVE[@]}"; do
      err=$WORK/loadgen.err
      limit=$(awk -v d="$DURATION" 'BEGIN { printf "%d", d + 60 }')
      if line=$(timeout "$limit" "$LOADGEN" run --proto mqtt --addr "127.0.0.1:$(mqtt_port "$s")" \
        --workload qos1 --payload 128 --inflight "$INFLIGHT" --session "$session" \
        --duration "$DURATION" --warmup "$WARMUP" --broker-pid "${PIDS[$s]}" --label "$s" 2>"$err"); then
        echo "$line" >>"$OUT/results-$session.jsonl"
        rate=$(grep -o '"delivered_per_s":[0-9.e+]*' <<<"$line" | cut -d: -f2)
        lat=$(grep -o '"puback":{"count":[0-9]*,"p50_us":[0-9.]*,"p99_us":[0-9.]*' <<<"$line" | sed 's/"puback":{"count":[0-9]*,//' || true)
        log "rep $rep/$REPS $session $s: $(printf '%.0f' "$rate") msg/s delivered, PUBACK $lat"
      else
        FAILED=$((FAILED + 1))
        msg=$(tail -n 1 "$err" | tr -d '"\\' | tr -cd '[:print:]')
        [[ -n $msg ]] || msg="loadgen timed out or crashed"
        printf '{"label":"%s","workload":"qos1","payload_bytes":128,"error":"%s"}\n' "$s" "$msg" \
          >>"$OUT/results-$session.jsonl"
        log "rep $rep/$REPS $session $s: FAILED: $msg; restarting $s"
        stop_proc "$s"
        start_broker "$s"
      fi
    done
  done
done

for s in "${ACTIVE[@]}"; do stop_proc "$s"; done

{
  echo "## Guaranteed delivery (QoS 1), one node: started $STARTED on $(nproc) cores, loopback"
  echo
  echo "Command: \`benches/run-qos1.sh $ARGS\`; $REPS repetition(s) of ${DURATION} s (after ${WARMUP} s warm-up), brokers interleaved, fresh brokers per repetition; QoS 1 window $INFLIGHT; load average before: $LOAD1."
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
  for s in "${ACTIVE[@]}"; do
    case "$s" in
      mosquitto) echo "- mosquitto $(mosquitto -h 2>/dev/null | head -n 1 | grep -o 'version [0-9.]*' | cut -d' ' -f2): persistence false, max_inflight_messages $INFLIGHT, max_queued_messages 100000" ;;
      mosquitto-persist) echo "- mosquitto-persist: the same with persistence true (mosquitto.db written, and fsynced once, at autosave_interval 1800 s and on exit: never during a run)" ;;
      rumqttd) echo "- rumqttd $(rumqttd --version | cut -d' ' -f2): in-memory commit log; 100 QoS 1 deliveries in flight per connection (fixed in 0.20)" ;;
    esac
  done
  for session in "${SESS[@]}"; do
    echo
    echo "Subscriber with a $session session, 1:1, 128 B, msg/s delivered end to end; PUBACK latency from the socket write of the PUBLISH to the read of its PUBACK:"
    echo
    "$LOADGEN" table "$OUT/results-$session.jsonl" --order "$SETUPS" --ratio-to rumqttd,mosquitto
  done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results: $OUT/results-*.jsonl, summary: $OUT/summary.md"

if [[ $FAILED -gt 0 ]]; then
  log "$FAILED run(s) failed"
  [[ $ALLOW_FAILURES == 1 ]] || exit 2
fi
