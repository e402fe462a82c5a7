#!/usr/bin/env bash
# The Kafka and AMQP bridges end to end, each against the broker's own client in the SAME run
# (setups interleaved, a fresh tansu and fresh meshgate nodes per repetition), 100 B records:
#
#   kafka-to-mqtt  tansu topic -> node's [[kafka.source]] -> MQTT subscriber (loadgen, raw MQTT
#                  3.1.1, clean session, QoS 0 subscription by default), against an rdkafka
#                  StreamConsumer in a consumer group reading the topic directly. The node runs
#                  with mqtt.max_queued_messages --max-queued (a source has no flow control
#                  towards subscribers: with the default 10,000 most records of a drain are
#                  dropped at the subscriber's queue). Both Kafka consumers get the librdkafka
#                  properties of --consumer-props (default fetch.wait.max.ms=10: against
#                  tansu 0.6 the fetch wait paces the consumer, and librdkafka's default of
#                  500 ms caps both near 170k records/s with the cores idle).
#   mqtt-to-kafka  MQTT publisher (QoS 1, window --inflight) -> node's [[kafka.sink]] -> tansu,
#                  until the sink's `forwarded` counter in GET /v1/bridges (records Kafka
#                  acknowledged) has all of them; against an rdkafka FutureProducer writing the
#                  same records directly (idempotent, linger.ms 2: the sink's settings) until all
#                  are acknowledged. Records/s from the first write.
#   amqp-to-mqtt   RabbitMQ queue -> node's [[amqp.source]] (prefetch 1000) -> MQTT subscriber,
#                  against a lapin consumer (prefetch 1000, manual ack, one multiple ack per
#                  batch, like the bridge).
#
# The two *-to-mqtt scenarios run in two modes:
#   live     the receiver is ready (a probe record came through), then a writer (rdkafka
#            FutureProducer, linger.ms 5; lapin, publisher confirms off) writes N records while
#            it receives: both setups see the same writer.
#   backlog  the receiver is ready, then the process consuming the broker (the meshgate node,
#            or the direct consumer's own process) is stopped with SIGSTOP, the N records are
#            written, and it is continued (SIGCONT): the rate of draining N records.
# Their rate is N / the time from the writer's first write (live) or the SIGCONT (backlog) to
# the last record at the receiver; the rate from its first to its last record is shown too.
#
# Prints markdown tables of medians with same-run ratios meshgate / direct. Everything started
# is stopped on exit (RabbitMQ, when this script started it, is left running, as the tests do).
# See docs/BENCHMARKS.md, "Bridges: Kafka and AMQP".
#
#   benches/run-bridges.sh            # 3 repetitions, 500,000 records per run (~4 min)
#   benches/run-bridges.sh --quick    # 1 repetition, 20,000 records: a smoke test (~10 s)
#
# Options:
#   --quick               1 repetition of 20,000 records
#   --reps N              repetitions (default 3)
#   --count N             records per run (default 500000)
#   --payload B           bytes per record (default 100)
#   --partitions P        partitions of the Kafka topics (default 1)
#   --inflight W          QoS 1 window of the MQTT publisher of mqtt-to-kafka (default 1024)
#   --sink-batch N        `batch` of the node's [[kafka.sink]] (default: the bridge's, 1000)
#   --sub-qos Q           QoS of the MQTT subscriber's subscription (default 0)
#   --max-queued N        the node's mqtt.max_queued_messages (default 1000000)
#   --consumer-props L    KEY=VALUE,... librdkafka properties of both Kafka consumers (the
#                         node's [[kafka]] properties and the direct consumer) (default
#                         fetch.wait.max.ms=10)
#   --scenarios LIST      kafka-to-mqtt,mqtt-to-kafka,amqp-to-mqtt (default all)
#   --modes LIST          live,backlog (default both; mqtt-to-kafka has only live)
#   --out DIR             where results go (default target/bridges/DATE-TIME)
#   --allow-failures      exit 0 even if some runs failed
#
# Environment: CARGO_TARGET_DIR (where loadgen is built), MESHGATE_BIN (default
# target/release/meshgate), TANSU (default: tansu on PATH or ~/.cargo/bin/tansu; 0.6 built with
# --features dynostore), AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f: RabbitMQ is
# reused when something listens on 127.0.0.1:5672, else started as shared/PEERS.md shows),
# BRIDGE_PORT_BASE (default 19750; meshgate uses BASE+1..BASE+3, tansu BASE+10+repetition).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=3
COUNT=500000
PAYLOAD=100
MAX_QUEUED=1000000
CONSUMER_PROPS=fetch.wait.max.ms=10
PARTITIONS=1
INFLIGHT=1024
SINK_BATCH=""
SUB_QOS=0
SCENARIOS=kafka-to-mqtt,mqtt-to-kafka,amqp-to-mqtt
MODES=live,backlog
OUT=""
ALLOW_FAILURES=0
ARGS="$*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1; COUNT=20000 ;;
    --reps) REPS=$2; shift ;;
    --count) COUNT=$2; shift ;;
    --payload) PAYLOAD=$2; shift ;;
    --partitions) PARTITIONS=$2; shift ;;
    --inflight) INFLIGHT=$2; shift ;;
    --sink-batch) SINK_BATCH=$2; shift ;;
    --sub-qos) SUB_QOS=$2; shift ;;
    --max-queued) MAX_QUEUED=$2; shift ;;
    --consumer-props) CONSUMER_PROPS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --modes) MODES=$2; shift ;;
    --out) OUT=$2; shift ;;
    --allow-failures) ALLOW_FAILURES=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-bridges: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

B=${BRIDGE_PORT_BASE:-19750}
MQTT_PORT=$((B + 1))
HTTP_PORT=$((B + 2))
MESH_PORT=$((B + 3))
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
MESHGATE_BIN=${MESHGATE_BIN:-$ROOT/target/release/meshgate}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/release/loadgen
export PATH="$HOME/.cargo/bin:$PATH"
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}

LOG_PREFIX=run-bridges
WORK=""
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

TANSU_PORT=""
RABBIT_PID=""

# A fresh tansu (memory storage) on its own port: tansu does not set SO_REUSEADDR, so the port
# of a killed one stays taken while its connections sit in TIME_WAIT.
start_tansu() {
  TANSU_PORT=$((B + 10 + $1))
  check_free "$TANSU_PORT"
  "$TANSU" broker --silent --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" --storage-engine memory://tansu/ \
    >>"$WORK/tansu.log" 2>&1 &
  PIDS[tansu]=$!
  wait_ready tansu port_open "$TANSU_PORT"
}

create_topic() {
  "$TANSU" topic create "$1" --partitions "$PARTITIONS" --broker "tcp://127.0.0.1:$TANSU_PORT" \
    >>"$WORK/tansu.log" 2>&1 || die "tansu topic create $1 failed (log: $WORK/tansu.log)"
}

rabbit_env() {
  env RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5672 \
    RABBITMQ_DIST_PORT=25672 ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" "$@"
}

# RabbitMQ on 127.0.0.1:5672: reused when running, else started as shared/PEERS.md shows.
ensure_rabbit() {
  if port_open 5672; then
    NOTES+=("RabbitMQ: already running on 127.0.0.1:5672, reused")
  else
    command -v rabbitmq-server >/dev/null || die "RabbitMQ is not running and rabbitmq-server is not installed (apt-get install --no-install-recommends rabbitmq-server)"
    log "starting RabbitMQ"
    rabbit_env rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed"
    local deadline=$((SECONDS + 60))
    until rabbit_env rabbitmqctl -n rabbit@localhost -q await_startup --timeout 60 >/dev/null 2>&1 && port_open 5672; do
      ((SECONDS < deadline)) || die "RabbitMQ did not start within 60 s"
      sleep 0.2
    done
    NOTES+=("RabbitMQ: started by this script (left running)")
  fi
  # Its Erlang VM, for the CPU columns (read only).
  RABBIT_PID=$(pgrep -f 'beam.smp.*rabbit' | head -n 1 || true)
  [[ -n $RABBIT_PID ]] || log "warning: no RabbitMQ process found: its CPU is not reported"
}

# start_node CONFIG: a fresh node with the bridges of CONFIG and an empty data directory.
start_node() {
  check_free "$MQTT_PORT" "$HTTP_PORT"
  rm -rf "$WORK/data-node"
  MESHGATE_MQTT__MAX_QUEUED_MESSAGES=$MAX_QUEUED "$MESHGATE_BIN" run --name bench --config "$1" --mqtt "127.0.0.1:$MQTT_PORT" \
    --http "127.0.0.1:$HTTP_PORT" --mesh "127.0.0.1:$MESH_PORT" --data-dir "$WORK/data-node" \
    >>"$WORK/meshgate.log" 2>&1 &
  PIDS[meshgate]=$!
  wait_ready meshgate http_ok "http://127.0.0.1:$HTTP_PORT/healthz" "$HTTP_PORT"
  wait_ready meshgate port_open "$MQTT_PORT"
}

# fail_line SCENARIO MODE SETUP ROLE MESSAGE: a JSON line for a failed run.
fail_line() {
  local msg
  msg=$(tr -d '"\\' <<<"$5" | tr -cd '[:print:]')
  [[ -n $msg ]] || msg="loadgen timed out or crashed"
  printf '{"scenario":"%s","mode":"%s","setup":"%s","rep":%d,"role":"%s","count":%d,"error":"%s"}\n' \
    "$1" "$2" "$3" "$rep" "$4" "$COUNT" "$msg" >>"$RESULTS"
  log "rep $rep $1 $2 $3: FAILED: $msg"
  FAILED=$((FAILED + 1))
}

field() { grep -o "\"$1\":[0-9.e+-]*" <<<"$2" | head -n 1 | cut -d: -f2; }
rate_of() { printf '%.0f' "$(field rate "$1")"; }

# run_source SCENARIO MODE SETUP: one run of kafka-to-mqtt or amqp-to-mqtt.
run_source() {
  local scenario=$1 mode=$2 setup=$3
  local id="r$rep-$mode-$setup"
  local recv=() send=() cpu=()
  local common=(--scenario "$scenario" --setup "$setup" --mode "$mode" --rep "$rep"
    --count "$COUNT" --payload "$PAYLOAD")
  # The node's configuration (written for the meshgate setup only).
  local conf=$WORK/$scenario-$id.toml
  [[ $setup == meshgate ]] || conf=/dev/null
  case $scenario in
    kafka-to-mqtt)
      local topic=bench-k2m-$id
      create_topic "$topic"
      recv=(--from kafka --bootstrap "127.0.0.1:$TANSU_PORT" --topic "$topic" --group "bench-direct-$id")
      local kv props=()
      IFS=, read -r -a props <<<"$CONSUMER_PROPS"
      local toml=""
      for kv in "${props[@]}"; do
        recv+=(--kafka-property "$kv")
        toml+="${toml:+, }\"${kv%%=*}\" = \"${kv#*=}\""
      done
      send=(--to kafka --bootstrap "127.0.0.1:$TANSU_PORT" --topic "$topic" --linger-ms 5)
      cpu=(--cpu "tansu=${PIDS[tansu]}")
      cat >"$conf" <<EOF
[[kafka]]
name = "tansu"
bootstrap = "127.0.0.1:$TANSU_PORT"
properties = { $toml }
[[kafka.source]]
name = "bench"
topics = ["$topic"]
topic_template = "bench/{partition}"
group = "tansu.bench-$id"
start = "earliest"
EOF
      ;;
    amqp-to-mqtt)
      local queue=bench-a2m-$STAMP-$id
      "$LOADGEN" bridge-setup --amqp-url "$AMQP_URL" --queue "$queue" 2>>"$WORK/loadgen.err" \
        || { fail_line "$scenario" "$mode" "$setup" recv "cannot declare queue $queue"; return; }
      recv=(--from amqp --amqp-url "$AMQP_URL" --queue "$queue" --prefetch 1000)
      send=(--to amqp --amqp-url "$AMQP_URL" --queue "$queue")
      [[ -z $RABBIT_PID ]] || cpu=(--cpu "rabbitmq=$RABBIT_PID")
      cat >"$conf" <<EOF
[[amqp]]
name = "rabbit"
url = "$AMQP_URL"
[[amqp.source]]
name = "bench"
queue = "$queue"
topic_template = "bench/amqp"
prefetch = 1000
EOF
      ;;
  esac
  local pause_pid=""
  if [[ $setup == meshgate ]]; then
    start_node "$conf"
    recv+=(--via mqtt --mqtt "127.0.0.1:$MQTT_PORT" --filter 'bench/#' --sub-qos "$SUB_QOS")
    cpu+=(--cpu "meshgate=${PIDS[meshgate]}")
    pause_pid=${PIDS[meshgate]}
  else
    recv+=(--via direct)
  fi
  local out=$WORK/recv.out err=$WORK/recv.err
  : >"$out"
  "$LOADGEN" bridge-recv "${common[@]}" "${recv[@]}" "${cpu[@]}" >"$out" 2>"$err" &
  local rpid=$!
  [[ -n $pause_pid ]] || pause_pid=$rpid
  local deadline=$((SECONDS + 60))
  until grep -qx ready "$out"; do
    if ! kill -0 "$rpid" 2>/dev/null || ((SECONDS >= deadline)); then
      kill "$rpid" 2>/dev/null || true
      wait "$rpid" 2>/dev/null || true
      fail_line "$scenario" "$mode" "$setup" recv "not ready: $(tail -n 1 "$err")"
      [[ $setup != meshgate ]] || stop_proc meshgate
      return
    fi
    sleep 0.02
  done
  [[ $mode != backlog ]] || kill -STOP "$pause_pid"
  local sline ok=1 start=""
  if ! sline=$("$LOADGEN" bridge-send "${common[@]}" "${send[@]}" "${cpu[@]}" 2>>"$WORK/loadgen.err"); then
    ok=0
  fi
  if [[ $mode == backlog ]]; then
    # The records can flow from the moment the consumer runs again.
    start=$(date +%s.%N)
    kill -CONT "$pause_pid"
  fi
  if [[ $ok == 1 ]]; then
    echo "$sline" >>"$RESULTS"
    [[ $mode == backlog ]] || start=$(field start_unix "$sline")
  else
    fail_line "$scenario" "$mode" "$setup" send "$(tail -n 1 "$WORK/loadgen.err")"
  fi
  local rc=0
  wait "$rpid" || rc=$?
  local rline
  rline=$(tail -n 1 "$out")
  if [[ $rc == 0 && $rline == \{* ]]; then
    # The rate of the run: from START (first write, or SIGCONT) to the last record.
    [[ -z $start ]] || rline=${rline/\"start_unix\":null/\"start_unix\":$start}
    echo "$rline" >>"$RESULTS"
    local received last rate=0
    received=$(field received "$rline")
    last=$(field last_unix "$rline")
    [[ -z $start || -z $last ]] || rate=$(awk -v n="$received" -v a="$start" -v b="$last" 'BEGIN { printf "%.0f", (b > a) ? n / (b - a) : 0 }')
    log "rep $rep $scenario $mode $setup: $rate rec/s end to end ($(rate_of "$rline") first to last record; writer $( [[ $ok == 1 ]] && rate_of "$sline" || echo failed) rec/s), $(field lost "$rline") missing"
  else
    fail_line "$scenario" "$mode" "$setup" recv "$(tail -n 1 "$err")"
  fi
  [[ $setup != meshgate ]] || stop_proc meshgate
}

# run_sink SETUP: one run of mqtt-to-kafka.
run_sink() {
  local scenario=mqtt-to-kafka mode=live setup=$1
  local id="r$rep-$setup"
  local topic=bench-m2k-$id
  create_topic "$topic"
  local common=(--scenario "$scenario" --setup "$setup" --mode "$mode" --rep "$rep"
    --count "$COUNT" --payload "$PAYLOAD" --cpu "tansu=${PIDS[tansu]}")
  local send
  if [[ $setup == meshgate ]]; then
    local conf=$WORK/$scenario-$id.toml
    cat >"$conf" <<EOF
[[kafka]]
name = "tansu"
bootstrap = "127.0.0.1:$TANSU_PORT"
[[kafka.sink]]
name = "out"
filter = "bench/m2k"
topic_template = "$topic"
${SINK_BATCH:+batch = $SINK_BATCH}
EOF
    start_node "$conf"
    send=(--to mqtt --mqtt "127.0.0.1:$MQTT_PORT" --topic bench/m2k --inflight "$INFLIGHT"
      --http "127.0.0.1:$HTTP_PORT" --sink out --cpu "meshgate=${PIDS[meshgate]}")
  else
    send=(--to kafka --bootstrap "127.0.0.1:$TANSU_PORT" --topic "$topic" --idempotent --linger-ms 2)
  fi
  local line
  if line=$("$LOADGEN" bridge-send "${common[@]}" "${send[@]}" 2>>"$WORK/loadgen.err"); then
    echo "$line" >>"$RESULTS"
    log "rep $rep $scenario $setup: $(rate_of "$line") rec/s written and acknowledged by Kafka"
  else
    fail_line "$scenario" "$mode" "$setup" send "$(tail -n 1 "$WORK/loadgen.err")"
  fi
  [[ $setup != meshgate ]] || stop_proc meshgate
}

# ---------------------------------------------------------------------------------------------
# Main

[[ -x $TANSU ]] || die "tansu not found (cargo install tansu --version 0.6.0 --locked --features dynostore; see shared/PEERS.md)"
[[ -x $MESHGATE_BIN ]] || die "$MESHGATE_BIN does not exist (cargo build --release --bin meshgate)"

log "building loadgen (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p meshgate-benches --bin loadgen) \
  || die "building loadgen failed"

OUT=${OUT:-$ROOT/target/bridges/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$OUT
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
STAMP=$(date +%s)
NOTES=()
FAILED=0

# Run a copy, so that a rebuild during the run cannot mix two versions.
cp "$MESHGATE_BIN" "$WORK/meshgate"
NOTES+=("meshgate $("$WORK/meshgate" --version | cut -d' ' -f2): copy of $MESHGATE_BIN built $(date -u -r "$MESHGATE_BIN" '+%Y-%m-%d %H:%M UTC'), default settings (store on, commit \"${MESHGATE_STORE__COMMIT:-group}\"${MESHGATE_STORE__COMMIT:+ from MESHGATE_STORE__COMMIT}, a data directory) but mqtt.max_queued_messages $MAX_QUEUED")
MESHGATE_BIN=$WORK/meshgate
MG_ENV=$(env | grep '^MESHGATE_[A-Z_]*__' | sort | tr '\n' ' ' || true)
[[ -z $MG_ENV ]] || NOTES+=("meshgate environment: $MG_ENV")
NOTES+=("$("$TANSU" --version 2>/dev/null | head -n 1) ($TANSU), memory storage, fresh per repetition; topics of $PARTITIONS partition(s); both Kafka consumers with $CONSUMER_PROPS")

IFS=, read -r -a SCEN <<<"$SCENARIOS"
IFS=, read -r -a MODE_LIST <<<"$MODES"
for s in "${SCEN[@]}"; do
  [[ $s == amqp-to-mqtt ]] && { ensure_rabbit; break; }
done

LOAD1=$(cut -d' ' -f1 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
log "load average before the runs: $LOAD1 (other work on this machine skews the numbers)"
for rep in $(seq "$REPS"); do
  start_tansu "$rep"
  for scenario in "${SCEN[@]}"; do
    case $scenario in
      kafka-to-mqtt|amqp-to-mqtt)
        for mode in "${MODE_LIST[@]}"; do
          for setup in meshgate direct; do run_source "$scenario" "$mode" "$setup"; done
        done ;;
      mqtt-to-kafka)
        for setup in meshgate direct; do run_sink "$setup"; done ;;
      *) die "unknown scenario $scenario" ;;
    esac
  done
  stop_proc tansu
done
LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg)
ENDED=$(date -u '+%H:%M:%S UTC')

{
  echo "## Bridges: started $STARTED, ended $ENDED, on $(nproc) cores, loopback"
  echo
  echo "Command: \`benches/run-bridges.sh $ARGS\`; $REPS repetition(s) of $COUNT records of $PAYLOAD B per run, setups interleaved; MQTT subscriber QoS $SUB_QOS; MQTT publisher QoS 1 with a window of $INFLIGHT${SINK_BATCH:+, sink batch $SINK_BATCH}; load average $LOAD1 before, $LOAD_AFTER after."
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
  echo
  "$LOADGEN" bridge-table "$RESULTS" --target kafka-to-mqtt=0.8 --target mqtt-to-kafka=0.8 --target amqp-to-mqtt=1.0
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results: $RESULTS, summary: $OUT/summary.md"

if [[ $FAILED -gt 0 ]]; then
  log "$FAILED run(s) failed"
  [[ $ALLOW_FAILURES == 1 ]] || exit 2
fi
