#!/usr/bin/env bash
# Guaranteed delivery across two meshgate nodes (publisher on A, subscriber on B; B dials A).
#
# (a) Throughput, in ONE run with the setups interleaved and started fresh per repetition:
#     MQTT QoS 1, 1:1, 128 B across the pair (the subscriber with a clean session, and with a
#     persistent one), against the same pair at QoS 0 and two nats-servers linked by a cluster
#     route and by a leafnode connection (core NATS, no JetStream: at most once).
# (b) Drain of a backlog: A and B linked, a persistent QoS 1 subscription on B; B is stopped
#     (SIGTERM); N QoS 1 events of 128 B are published on A and all acknowledged (A's store
#     holds them in its queue for B: GET /v1/backlog); then the subscriber's client starts
#     (retrying until B answers) and B is started again on the same data. Measured: from B's
#     start until A's backlog is 0 and the subscriber has all N distinct events -> events/s.
#
# Everything started is stopped on exit. See docs/BENCHMARKS.md, "Guaranteed delivery (QoS 1)".
#
#   benches/run-guaranteed-mesh.sh            # 2 repetitions of (a) at 5 s, 2 drains of 1,000,000
#   benches/run-guaranteed-mesh.sh --quick    # 1 repetition at 1 s, 1 drain of 20,000
#
# Options:
#   --quick               1 repetition, 1 s runs, 0.2 s warm-up, 1 drain of 20,000 events
#   --reps N              repetitions of (a) and of (b) (default 2)
#   --duration S          measured seconds per run of (a) (default 5)
#   --parts LIST          throughput,drain (default both)
#   --setups LIST         of (a): meshgate-qos1,meshgate-qos1-persistent,meshgate-qos0,
#                         nats-route,nats-leaf
#   --inflight W          QoS 1 window of the publisher and meshgate's mqtt.max_inflight
#                         (default 256)
#   --drain-events N      events in the backlog of (b) (default 1000000)
#   --commit POLICY       meshgate's store.commit: group, always, os (default group)
#   --out DIR             where results go (default target/guaranteed-mesh/DATE-TIME)
#   --allow-failures      exit 0 even if some runs failed
#
# Environment: CARGO_TARGET_DIR (where loadgen is built), MESHGATE_BIN (default
# target/release/meshgate), GMESH_PORT_BASE (default 19100; ports BASE+1 .. BASE+17).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=2
DURATION=5
WARMUP=0.5
INFLIGHT=256
DRAIN_EVENTS=1000000
COMMIT=group
PARTS=throughput,drain
SETUPS=meshgate-qos1,meshgate-qos1-persistent,meshgate-qos0,nats-route,nats-leaf
OUT=""
ALLOW_FAILURES=0
ARGS="$*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1; DURATION=1; WARMUP=0.2; DRAIN_EVENTS=20000 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --parts) PARTS=$2; shift ;;
    --setups) SETUPS=$2; shift ;;
    --inflight) INFLIGHT=$2; shift ;;
    --drain-events) DRAIN_EVENTS=$2; shift ;;
    --commit) COMMIT=$2; shift ;;
    --out) OUT=$2; shift ;;
    --allow-failures) ALLOW_FAILURES=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-guaranteed-mesh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

B=${GMESH_PORT_BASE:-19100}
# meshgate pair: MQTT, HTTP, mesh (UDP) of a, then of b.
MG_A=($((B + 1)) $((B + 2)) $((B + 3)))
MG_B=($((B + 4)) $((B + 5)) $((B + 6)))
# nats-server route pair: client, monitoring, cluster of n1, then of n2.
NR_1=($((B + 7)) $((B + 8)) $((B + 9)))
NR_2=($((B + 10)) $((B + 11)) $((B + 12)))
# nats-server leafnode pair: hub client, monitoring, leafnode port; leaf client, monitoring.
NL_HUB=($((B + 13)) $((B + 14)) $((B + 15)))
NL_LEAF=($((B + 16)) $((B + 17)))
MESHGATE_BIN=${MESHGATE_BIN:-$ROOT/target/release/meshgate}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/release/loadgen
export PATH="$HOME/.cargo/bin:$PATH"

LOG_PREFIX=run-guaranteed-mesh
WORK=""
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# The meshgate pair, from fresh data directories unless `keep` is given.
start_pair() {
  [[ ${1:-} == keep ]] || rm -rf "$WORK/data-mg-a" "$WORK/data-mg-b"
  start_node mg-a
  start_node mg-b
  wait_ready mg-a mesh_linked "${MG_A[1]}" 2
  wait_ready mg-b mesh_linked "${MG_B[1]}" 2
}

# start_node mg-a|mg-b: the node with this run's store and MQTT settings (b dials a).
start_node() {
  if [[ $1 == mg-a ]]; then
    MESHGATE_STORE__COMMIT=$COMMIT MESHGATE_MQTT__MAX_INFLIGHT=$INFLIGHT start_meshgate mg-a "${MG_A[@]}"
  else
    MESHGATE_STORE__COMMIT=$COMMIT MESHGATE_MQTT__MAX_INFLIGHT=$INFLIGHT start_meshgate mg-b "${MG_B[@]}" "${MG_A[2]}"
  fi
}

start_setup() {
  case "$1" in
    meshgate)
      start_pair
      probe mqtt "127.0.0.1:${MG_A[0]}" "127.0.0.1:${MG_B[0]}" ;;
    nats-route)
      start_nats nr-1 "listen: 127.0.0.1:${NR_1[0]}
http: 127.0.0.1:${NR_1[1]}
server_name: nr-1
cluster { name: bench, listen: 127.0.0.1:${NR_1[2]}, routes: [nats-route://127.0.0.1:${NR_2[2]}] }" "${NR_1[0]}" "${NR_1[1]}"
      start_nats nr-2 "listen: 127.0.0.1:${NR_2[0]}
http: 127.0.0.1:${NR_2[1]}
server_name: nr-2
cluster { name: bench, listen: 127.0.0.1:${NR_2[2]}, routes: [nats-route://127.0.0.1:${NR_1[2]}] }" "${NR_2[0]}" "${NR_2[1]}"
      wait_ready nr-1 routez_up "${NR_1[1]}"
      wait_ready nr-2 routez_up "${NR_2[1]}"
      probe nats "127.0.0.1:${NR_1[0]}" "127.0.0.1:${NR_2[0]}" ;;
    nats-leaf)
      start_nats nl-hub "listen: 127.0.0.1:${NL_HUB[0]}
http: 127.0.0.1:${NL_HUB[1]}
server_name: nl-hub
leafnodes { listen: 127.0.0.1:${NL_HUB[2]} }" "${NL_HUB[0]}" "${NL_HUB[1]}"
      start_nats nl-leaf "listen: 127.0.0.1:${NL_LEAF[0]}
http: 127.0.0.1:${NL_LEAF[1]}
server_name: nl-leaf
leafnodes { remotes: [ { url: \"nats-leaf://127.0.0.1:${NL_HUB[2]}\" } ] }" "${NL_LEAF[0]}" "${NL_LEAF[1]}"
      wait_ready nl-hub leafz_up "${NL_HUB[1]}"
      wait_ready nl-leaf leafz_up "${NL_LEAF[1]}"
      probe nats "127.0.0.1:${NL_HUB[0]}" "127.0.0.1:${NL_LEAF[0]}" ;;
  esac
  log "$1 ready"
}

stop_setup() {
  case "$1" in
    meshgate) stop_proc mg-b; stop_proc mg-a ;;
    nats-route) stop_proc nr-2; stop_proc nr-1 ;;
    nats-leaf) stop_proc nl-leaf; stop_proc nl-hub ;;
  esac
}

pair_of() { case "$1" in meshgate-*) echo meshgate ;; *) echo "$1" ;; esac; }
pub_of() { case "$1" in meshgate) echo "127.0.0.1:${MG_A[0]}" ;; nats-route) echo "127.0.0.1:${NR_1[0]}" ;; nats-leaf) echo "127.0.0.1:${NL_HUB[0]}" ;; esac; }
sub_of() { case "$1" in meshgate) echo "127.0.0.1:${MG_B[0]}" ;; nats-route) echo "127.0.0.1:${NR_2[0]}" ;; nats-leaf) echo "127.0.0.1:${NL_LEAF[0]}" ;; esac; }
pids_of() { case "$1" in meshgate) echo "${PIDS[mg-a]},${PIDS[mg-b]}" ;; nats-route) echo "${PIDS[nr-1]},${PIDS[nr-2]}" ;; nats-leaf) echo "${PIDS[nl-hub]},${PIDS[nl-leaf]}" ;; esac; }
# loadgen arguments of a setup of (a).
args_of() {
  case "$1" in
    meshgate-qos1) echo "--proto mqtt --workload qos1 --session clean --inflight $INFLIGHT" ;;
    meshgate-qos1-persistent) echo "--proto mqtt --workload qos1 --session persistent --inflight $INFLIGHT" ;;
    meshgate-qos0) echo "--proto mqtt --workload one-to-one" ;;
    nats-route|nats-leaf) echo "--proto nats --workload one-to-one" ;;
    *) die "unknown setup $1" ;;
  esac
}

# Events waiting in the link queues of the node with this HTTP port (GET /v1/backlog).
link_backlog() {
  curl -sf --max-time 2 "http://127.0.0.1:$1/v1/backlog" | grep -o '"links":\[[^]]*\]' \
    | grep -o '"events":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }'
}

now() { date +%s.%N; }

# ---------------------------------------------------------------------------------------------
# Main
command -v nats-server >/dev/null || die "nats-server missing (benches/run-load.sh installs it, or: apt-get install nats-server)"
command -v curl >/dev/null || die "curl missing"
[[ -x $MESHGATE_BIN ]] || die "$MESHGATE_BIN does not exist (build it with cargo build --release --bin meshgate)"

log "building loadgen (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p meshgate-benches --bin loadgen) \
  || die "building loadgen failed"

OUT=${OUT:-$ROOT/target/guaranteed-mesh/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$OUT
RESULTS=$OUT/results.jsonl
DRAINS=$OUT/drain.jsonl
: >"$RESULTS"
: >"$DRAINS"
cp "$MESHGATE_BIN" "$WORK/meshgate"
BUILT=$(date -u -r "$MESHGATE_BIN" '+%Y-%m-%d %H:%M UTC')
MESHGATE_BIN=$WORK/meshgate
"$MESHGATE_BIN" cert init --dir "$WORK/tls" >/dev/null
for n in mg-a mg-b; do "$MESHGATE_BIN" cert issue --dir "$WORK/tls" --name "$n" >/dev/null; done

IFS=, read -r -a PART_LIST <<<"$PARTS"
IFS=, read -r -a WANTED <<<"$SETUPS"
PAIRS=()
for s in "${WANTED[@]}"; do
  args_of "$s" >/dev/null
  p=$(pair_of "$s")
  [[ " ${PAIRS[*]} " == *" $p "* ]] || PAIRS+=("$p")
done
want_part() { [[ " ${PART_LIST[*]} " == *" $1 "* ]]; }

LOAD1=$(cut -d' ' -f1 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
log "load average before the runs: $LOAD1 (other work on this machine skews the numbers)"
FAILED=0

if want_part throughput; then
  for rep in $(seq "$REPS"); do
    for p in "${PAIRS[@]}"; do start_setup "$p"; done
    for s in "${WANTED[@]}"; do
      p=$(pair_of "$s")
      err=$WORK/loadgen.err
      limit=$(awk -v d="$DURATION" 'BEGIN { printf "%d", d + 60 }')
      # shellcheck disable=SC2046 # args_of is a list of words
      if line=$(timeout "$limit" "$LOADGEN" run $(args_of "$s") --payload 128 \
        --pub-addr "$(pub_of "$p")" --sub-addr "$(sub_of "$p")" --duration "$DURATION" \
        --warmup "$WARMUP" --broker-pid "$(pids_of "$p")" --label "$s" 2>"$err"); then
        echo "$line" >>"$RESULTS"
        rate=$(grep -o '"delivered_per_s":[0-9.e+]*' <<<"$line" | cut -d: -f2)
        lat=$(grep -o '"puback":{"count":[0-9]*,"p50_us":[0-9.]*,"p99_us":[0-9.]*' <<<"$line" | sed 's/"puback":{"count":[0-9]*,/, PUBACK /' || true)
        log "rep $rep/$REPS $s: $(printf '%.0f' "$rate") msg/s delivered$lat"
      else
        FAILED=$((FAILED + 1))
        msg=$(tail -n 1 "$err" | tr -d '"\\' | tr -cd '[:print:]')
        [[ -n $msg ]] || msg="loadgen timed out or crashed"
        printf '{"label":"%s","workload":"qos1","payload_bytes":128,"error":"%s"}\n' "$s" "$msg" >>"$RESULTS"
        log "rep $rep/$REPS $s: FAILED: $msg; restarting $p"
        stop_setup "$p"
        start_setup "$p"
      fi
    done
    for p in "${PAIRS[@]}"; do stop_setup "$p"; done
  done
fi

# One drain: see the header. Appends one JSON line to DRAINS.
drain_once() {
  local rep=$1 n=$DRAIN_EVENTS client=lg-drain-$1
  log "drain $rep/$REPS: starting a fresh pair"
  start_pair
  "$LOADGEN" qos1-subscribe --addr "127.0.0.1:${MG_B[0]}" --client-id "$client" --topic bench/drain \
    --probe-from "127.0.0.1:${MG_A[0]}" >/dev/null || { log "drain $rep: subscribing failed"; return 1; }
  stop_proc mg-b
  log "drain $rep/$REPS: b stopped; publishing $n QoS 1 events on a"
  local fill
  fill=$("$LOADGEN" qos1-publish --addr "127.0.0.1:${MG_A[0]}" --count "$n" --payload 128 \
    --inflight "$INFLIGHT" --topic bench/drain --label fill 2>"$WORK/fill.err") \
    || { log "drain $rep: publishing failed: $(tail -n 1 "$WORK/fill.err")"; return 1; }
  local fill_rate backlog before
  fill_rate=$(grep -o '"acked_per_s":[0-9.e+]*' <<<"$fill" | cut -d: -f2)
  backlog=$(link_backlog "${MG_A[1]}")
  before=$(curl -sf --max-time 2 "http://127.0.0.1:${MG_A[1]}/v1/backlog" | tr -d '\n')
  log "drain $rep/$REPS: $n acknowledged at $(printf '%.0f' "$fill_rate")/s; a's backlog: $backlog events; $before"
  [[ $backlog -ge $n ]] || log "drain $rep: WARNING: a's backlog holds $backlog events, not $n"

  local t0 t_ready t_empty="" recv_out=$WORK/receive-$rep.json
  t0=$(now)
  "$LOADGEN" qos1-receive --addr "127.0.0.1:${MG_B[0]}" --client-id "$client" --count "$n" \
    --connect-timeout 60 --timeout 1800 >"$recv_out" 2>"$WORK/receive-$rep.err" &
  PIDS[receiver]=$!
  start_node mg-b
  t_ready=$(now)
  local last_log=$SECONDS deadline=$((SECONDS + 1800)) left
  while :; do
    left=$(link_backlog "${MG_A[1]}" || echo "?")
    if [[ $left == 0 ]]; then t_empty=$(now); break; fi
    kill -0 "${PIDS[receiver]}" 2>/dev/null || [[ -n $(cat "$recv_out") ]] || break
    if ((SECONDS - last_log >= 5)); then
      log "drain $rep/$REPS: a's backlog $left events; $(tail -n 1 "$WORK/receive-$rep.err")"
      last_log=$SECONDS
    fi
    ((SECONDS < deadline)) || break
    sleep 0.1
  done
  wait "${PIDS[receiver]}" || true
  unset "PIDS[receiver]"
  local recv all complete
  recv=$(cat "$recv_out")
  all=$(grep -o '"all_unix":[0-9.]*' <<<"$recv" | cut -d: -f2 || true)
  complete=$(grep -o '"complete":[a-z]*' <<<"$recv" | cut -d: -f2 || true)
  if [[ -z $t_empty || $complete != true ]]; then
    log "drain $rep: did not complete: a's backlog ${left:-?}, receiver: $recv $(tail -n 2 "$WORK/receive-$rep.err")"
    stop_setup meshgate
    return 1
  fi
  local line
  line=$(awk -v n="$n" -v t0="$t0" -v r="$t_ready" -v e="$t_empty" -v a="$all" -v f="$fill_rate" \
    -v rep="$rep" -v b="$backlog" 'BEGIN {
      end = (e > a) ? e : a
      printf "{\"rep\":%d,\"events\":%d,\"backlog_before\":%d,\"fill_per_s\":%.0f,\"b_ready_s\":%.3f,", rep, n, b, f, r - t0
      printf "\"backlog_empty_s\":%.3f,\"all_received_s\":%.3f,\"drain_s\":%.3f,\"drain_per_s\":%.0f,", e - t0, a - t0, end - t0, n / (end - t0)
      printf "\"drain_after_ready_per_s\":%.0f,", n / (end - r)
    }')
  line+="\"receiver\":$recv}"
  echo "$line" >>"$DRAINS"
  log "drain $rep/$REPS: b ready after $(awk -v a="$t_ready" -v b="$t0" 'BEGIN { printf "%.2f", a - b }') s; $(grep -o '"backlog_empty_s":[0-9.]*,"all_received_s":[0-9.]*,"drain_s":[0-9.]*,"drain_per_s":[0-9]*' <<<"$line")"
  stop_setup meshgate
}

if want_part drain; then
  for rep in $(seq "$REPS"); do
    drain_once "$rep" || FAILED=$((FAILED + 1))
  done
fi

{
  echo "## Guaranteed delivery (QoS 1) across two nodes: started $STARTED on $(nproc) cores, loopback"
  echo
  echo "Command: \`benches/run-guaranteed-mesh.sh $ARGS\`; $REPS repetition(s); load average before: $LOAD1."
  echo
  echo "- meshgate $("$MESHGATE_BIN" --version | cut -d' ' -f2) (copy of the binary built $BUILT): publish on a, subscribe on b (b dials a); store.commit $COMMIT, group_commit_ms 1, mqtt.max_inflight $INFLIGHT; QoS 1 window of the publisher $INFLIGHT"
  echo "- nats-server $(nats-server --version | grep -o 'v[0-9][0-9.]*'): core NATS (no JetStream, at most once): nats-route publishes on nr-1, subscribes on nr-2; nats-leaf publishes on the hub, subscribes on the leaf"
  if [[ -s $RESULTS ]]; then
    echo
    echo "(a) 1:1, 128 B, msg/s delivered end to end (${DURATION} s after ${WARMUP} s warm-up):"
    echo
    "$LOADGEN" table "$RESULTS" --order "$SETUPS" --ratio-to meshgate-qos0,nats-route,nats-leaf
  fi
  if [[ -s $DRAINS ]]; then
    echo
    echo "(b) Drain of a backlog of $DRAIN_EVENTS QoS 1 events of 128 B held on a for b (persistent QoS 1 subscriber on b), from b's start:"
    echo
    echo "| rep | fill on a (acked/s) | b ready (s) | a's backlog empty (s) | all received (s) | drain (events/s) | duplicates |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    while IFS= read -r l; do
      f() { grep -o "\"$1\":[0-9.]*" <<<"$l" | head -n 1 | cut -d: -f2; }
      printf '| %s | %.0f | %s | %s | %s | %.0f | %s |\n' "$(f rep)" "$(f fill_per_s)" "$(f b_ready_s)" \
        "$(f backlog_empty_s)" "$(f all_received_s)" "$(f drain_per_s)" "$(f duplicates)"
    done <"$DRAINS"
  fi
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results: $RESULTS, $DRAINS; summary: $OUT/summary.md"

if [[ $FAILED -gt 0 ]]; then
  log "$FAILED run(s) failed"
  [[ $ALLOW_FAILURES == 1 ]] || exit 2
fi
