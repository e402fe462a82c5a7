#!/usr/bin/env bash
# Open-loop floods: a publisher that writes QoS 0 messages as fast as the socket takes them,
# subscribers that read as fast as they can, every message counted and its order checked
# (`loadgen flood`). On one node: meshgate against nats-server, mosquitto and rumqttd. Across two
# nodes: a meshgate pair linked over QUIC against a nats-server cluster route. Each run starts
# its broker(s) fresh; repetitions alternate the setups (A B C, A B C, ...). The tables give
# every run's rate and delivered share, the median rate, and the same-run ratio to
# nats-server. See docs/BENCHMARKS.md.
#
#   benches/run-flood.sh            # 5 repetitions (~25 min on 2 cores)
#   benches/run-flood.sh --quick    # 1 repetition, a tenth of the messages: a smoke test
#
# Options:
#   --reps N           repetitions (default 5)
#   --quick            1 repetition, counts divided by 10
#   --items LIST       comma-separated subset of 1node-16,1node-128,1node-1024,fanout10-128,
#                      2node-16,2node-128,2node-1024
#   --setups LIST      comma-separated subset of meshgate,nats-server,mosquitto,rumqttd
#                      (2node items: meshgate and nats-server only)
#   --out DIR          where results go (default target/flood/DATE-TIME)
#   --no-install       fail instead of installing missing peers
#
# Environment: CARGO_TARGET_DIR (where loadgen is built), MESHGATE_BIN (default
# target/release/meshgate, built if missing), FLOOD_PORT_BASE (default 19300).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=5
DIV=1
ITEMS=1node-16,1node-128,1node-1024,fanout10-128,2node-16,2node-128,2node-1024
SETUPS=meshgate,nats-server,mosquitto,rumqttd
OUT=""
INSTALL=1
ARGS="$*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1; DIV=10 ;;
    --reps) REPS=$2; shift ;;
    --items) ITEMS=$2; shift ;;
    --setups) SETUPS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-flood: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

B=${FLOOD_PORT_BASE:-19300}
MESHGATE_BIN=${MESHGATE_BIN:-$ROOT/target/release/meshgate}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/release/loadgen
export PATH="$HOME/.cargo/bin:$PATH"

LOG_PREFIX=run-flood
WORK=""
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# One node: MQTT (or NATS client) port, HTTP (or monitoring) port.
N1=($((B + 1)) $((B + 2)) $((B + 3)))
# Two nodes: a, then b (client, http/monitoring, mesh/cluster).
N2A=($((B + 11)) $((B + 12)) $((B + 13)))
N2B=($((B + 14)) $((B + 15)) $((B + 16)))

start_one() {
  case "$1" in
    meshgate)
      rm -rf "$WORK/data-m1"
      start_meshgate m1 "${N1[@]}" ;;
    nats-server)
      start_nats n1 "listen: 127.0.0.1:${N1[0]}
http: 127.0.0.1:${N1[1]}" "${N1[0]}" "${N1[1]}" ;;
    mosquitto)
      check_free "${N1[0]}"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' \
        "${N1[0]}" >"$WORK/mosquitto.conf"
      mosquitto -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
      PIDS[mosquitto]=$!
      wait_ready mosquitto port_open "${N1[0]}" ;;
    rumqttd)
      check_free "${N1[0]}"
      cat >"$WORK/rumqttd.toml" <<EOF
id = 0
[router]
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:${N1[0]}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
EOF
      rumqttd -q -c "$WORK/rumqttd.toml" >>"$WORK/rumqttd.log" 2>&1 &
      PIDS[rumqttd]=$!
      wait_ready rumqttd port_open "${N1[0]}" ;;
  esac
}

stop_all() {
  local name
  for name in "${!PIDS[@]}"; do stop_proc "$name"; done
}

start_two() {
  case "$1" in
    meshgate)
      rm -rf "$WORK/data-ma" "$WORK/data-mb"
      start_meshgate ma "${N2A[@]}"
      start_meshgate mb "${N2B[@]}" "${N2A[2]}"
      wait_ready ma mesh_linked "${N2A[1]}" 2
      wait_ready mb mesh_linked "${N2B[1]}" 2 ;;
    nats-server)
      start_nats na "listen: 127.0.0.1:${N2A[0]}
http: 127.0.0.1:${N2A[1]}
server_name: na
cluster { name: flood, listen: 127.0.0.1:${N2A[2]}, routes: [nats-route://127.0.0.1:${N2B[2]}] }" "${N2A[0]}" "${N2A[1]}"
      start_nats nb "listen: 127.0.0.1:${N2B[0]}
http: 127.0.0.1:${N2B[1]}
server_name: nb
cluster { name: flood, listen: 127.0.0.1:${N2B[2]}, routes: [nats-route://127.0.0.1:${N2A[2]}] }" "${N2B[0]}" "${N2B[1]}"
      wait_ready na routez_up "${N2A[1]}"
      wait_ready nb routez_up "${N2B[1]}" ;;
  esac
}

proto_of() { [[ $1 == nats-server ]] && echo nats || echo mqtt; }

# run_item ITEM SETUP: one run, its JSON line appended to the results.
run_item() {
  local item=$1 setup=$2 payload subs=1 count nodes=1 pub sub
  payload=${item##*-}
  case "$item" in
    1node-*) count=2000000 ;;
    fanout10-*) count=200000; subs=10 ;;
    2node-*) count=2000000; nodes=2 ;;
  esac
  [[ $payload -lt 1024 ]] || count=$((count / 4))
  count=$((count / DIV))
  if [[ $nodes == 2 ]]; then
    [[ $setup == meshgate || $setup == nats-server ]] || return 0
    start_two "$setup"
    pub="127.0.0.1:${N2A[0]}"; sub="127.0.0.1:${N2B[0]}"
  else
    start_one "$setup"
    pub="127.0.0.1:${N1[0]}"; sub=$pub
  fi
  local line
  if line=$("$LOADGEN" flood --proto "$(proto_of "$setup")" --pub-addr "$pub" --sub-addr "$sub" \
      --count "$count" --payload "$payload" --subscribers "$subs" --label "$setup" \
      --workload "${item%-*}" 2>>"$WORK/loadgen.log"); then
    echo "$line" >>"$RESULTS"
    log "$item $setup: $(grep -o '"rate":[0-9.]*' <<<"$line") $(grep -o '"delivered_share":[0-9.]*' <<<"$line")"
  else
    log "$item $setup: failed (see $WORK/loadgen.log)"
  fi
  stop_all
}

install_peers
log "building loadgen (release)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p meshgate-benches --bin loadgen) \
  || die "building loadgen failed"
if [[ ! -x $MESHGATE_BIN ]]; then
  log "building meshgate (release)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q --bin meshgate) \
    || die "building meshgate failed"
fi
OUT=${OUT:-$ROOT/target/flood/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$OUT
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
# Run a copy, so that a rebuild during the run cannot mix two versions.
cp "$MESHGATE_BIN" "$WORK/meshgate"
MESHGATE_BIN=$WORK/meshgate
mkdir -p "$WORK/tls"
"$MESHGATE_BIN" cert init --dir "$WORK/tls" >/dev/null
for n in m1 ma mb; do "$MESHGATE_BIN" cert issue --dir "$WORK/tls" --name "$n" >/dev/null; done

IFS=, read -r -a ITEM_LIST <<<"$ITEMS"
IFS=, read -r -a SETUP_LIST <<<"$SETUPS"
for rep in $(seq "$REPS"); do
  for item in "${ITEM_LIST[@]}"; do
    for setup in "${SETUP_LIST[@]}"; do
      run_item "$item" "$setup"
    done
  done
  log "repetition $rep of $REPS done"
done

{
  echo "## Floods ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "Command: \`benches/run-flood.sh $ARGS\`; $REPS repetition(s); meshgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')."
  "$LOADGEN" flood-table "$RESULTS" --baseline nats-server --order meshgate,nats-server,mosquitto,rumqttd
} | tee "$OUT/summary.md"
