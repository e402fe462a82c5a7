#!/usr/bin/env bash
# Mesh benchmarks: two linked meshgate nodes against two linked nats-servers (a cluster route,
# and a leafnode hub + leaf), publishing on node A and subscribing on node B; raw quinn as the
# transport baseline; and subscription propagation time on chains of 2, 3 and 8 meshgate nodes.
#
# Per repetition every pair is started fresh and waited for by condition (meshgate: /healthz,
# /v1/mesh lists both nodes with the link up, and a probe published on A arrives on B;
# nats-server: /healthz, /routez or /leafz shows the route or leaf connection, and the same
# probe); then every workload item runs on each setup in turn (meshgate, nats-route, nats-leaf,
# and quinn-raw after the 1 KiB item). Everything started is stopped on exit. See
# docs/BENCHMARKS.md, "Mesh: two nodes and more".
#
#   benches/run-mesh.sh            # 3 repetitions, 5 s per run (~8 min on 2 cores)
#   benches/run-mesh.sh --quick    # 1 repetition, 1 s runs, 10 propagation rounds
#
# Options:
#   --quick               1 repetition, 1 s runs, 0.2 s warm-up, 10 propagation rounds
#   --reps N              repetitions (default 3)
#   --duration S          measured seconds per run (default 5)
#   --setups LIST         comma-separated subset of meshgate,nats-route,nats-leaf,quinn-raw
#   --workloads LIST      comma-separated subset of one-to-one,latency,rtt,propagation
#   --rounds N            subscribe/unsubscribe rounds per chain and repetition (default 30)
#   --chains LIST         chain lengths for propagation (default 2,3,8)
#   --out DIR             where results go (default target/mesh/DATE-TIME)
#   --allow-failures      exit 0 even if some runs failed
#
# Environment: CARGO_TARGET_DIR (where loadgen and quinn_raw are built), MESHGATE_BIN (default
# target/release/meshgate), MESH_PORT_BASE (default 18900; ports BASE+1 .. BASE+17 for the
# pairs and BASE+101 .. BASE+130 for the chains).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=3
DURATION=5
WARMUP=0.5
RATE=10000
LAT_PAYLOAD=64
ROUNDS=30
CHAINS=2,3,8
SETUPS=meshgate,nats-route,nats-leaf,quinn-raw
WORKLOADS=one-to-one,latency,rtt,propagation
OUT=""
ALLOW_FAILURES=0
ARGS="$*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1; DURATION=1; WARMUP=0.2; ROUNDS=10 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --setups) SETUPS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --chains) CHAINS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --allow-failures) ALLOW_FAILURES=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-mesh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

B=${MESH_PORT_BASE:-18900}
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
QUINN_RAW=$TARGET_DIR/release/quinn_raw
export PATH="$HOME/.cargo/bin:$PATH"

LOG_PREFIX=run-mesh
WORK=""
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# ---------------------------------------------------------------------------------------------
# Pairs (stop_proc, wait_ready, check_free, probe, mesh_linked, start_meshgate, start_nats,
# routez_up, leafz_up: benches/lib.sh)
start_setup() {
  case "$1" in
    meshgate)
      start_meshgate mg-a "${MG_A[@]}"
      start_meshgate mg-b "${MG_B[@]}" "${MG_A[2]}"
      wait_ready mg-a mesh_linked "${MG_A[1]}" 2
      wait_ready mg-b mesh_linked "${MG_B[1]}" 2
      probe mqtt "127.0.0.1:${MG_A[0]}" "127.0.0.1:${MG_B[0]}" ;;
    nats-route)
      # Each server lists the other as a route; one route connection results.
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

# Publisher's address, subscribers' address, protocol and the PIDs of both nodes.
pub_of() { case "$1" in meshgate) echo "127.0.0.1:${MG_A[0]}" ;; nats-route) echo "127.0.0.1:${NR_1[0]}" ;; nats-leaf) echo "127.0.0.1:${NL_HUB[0]}" ;; esac; }
sub_of() { case "$1" in meshgate) echo "127.0.0.1:${MG_B[0]}" ;; nats-route) echo "127.0.0.1:${NR_2[0]}" ;; nats-leaf) echo "127.0.0.1:${NL_LEAF[0]}" ;; esac; }
proto_of() { [[ $1 == meshgate ]] && echo mqtt || echo nats; }
pids_of() { case "$1" in meshgate) echo "${PIDS[mg-a]},${PIDS[mg-b]}" ;; nats-route) echo "${PIDS[nr-1]},${PIDS[nr-2]}" ;; nats-leaf) echo "${PIDS[nl-hub]},${PIDS[nl-leaf]}" ;; esac; }

# ---------------------------------------------------------------------------------------------
# Main
command -v nats-server >/dev/null || die "nats-server missing (benches/run-load.sh installs it, or: apt-get install nats-server)"
command -v curl >/dev/null || die "curl missing"
[[ -x $MESHGATE_BIN ]] || die "$MESHGATE_BIN does not exist (build it with cargo build --release -p meshgate)"

log "building loadgen and quinn_raw (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p meshgate-benches --bin loadgen --bin quinn_raw) \
  || die "building loadgen failed"

OUT=${OUT:-$ROOT/target/mesh/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$OUT
RESULTS=$OUT/results.jsonl
PROP=$OUT/propagation.jsonl
: >"$RESULTS"
: >"$PROP"
# Run a copy, so that a rebuild during the run cannot mix two versions.
cp "$MESHGATE_BIN" "$WORK/meshgate"
BUILT=$(date -u -r "$MESHGATE_BIN" '+%Y-%m-%d %H:%M UTC')
MESHGATE_BIN=$WORK/meshgate
"$MESHGATE_BIN" cert init --dir "$WORK/tls" >/dev/null
for n in mg-a mg-b $(seq -f 'chain-%g' 0 15); do "$MESHGATE_BIN" cert issue --dir "$WORK/tls" --name "$n" >/dev/null; done

IFS=, read -r -a WANTED <<<"$SETUPS"
IFS=, read -r -a WL <<<"$WORKLOADS"
IFS=, read -r -a CHAIN_LENGTHS <<<"$CHAINS"
PAIRS=()
RAW=0
for s in "${WANTED[@]}"; do
  case "$s" in
    meshgate|nats-route|nats-leaf) PAIRS+=("$s") ;;
    quinn-raw) RAW=1 ;;
    *) die "unknown setup $s" ;;
  esac
done
ITEMS=()
PROPAGATION=0
for w in "${WL[@]}"; do
  case "$w" in
    one-to-one) ITEMS+=(one-to-one:16 one-to-one:128 one-to-one:1024) ;;
    latency|rtt) ITEMS+=("$w:$LAT_PAYLOAD") ;;
    propagation) PROPAGATION=1 ;;
    *) die "unknown workload $w" ;;
  esac
done

LOAD1=$(cut -d' ' -f1 /proc/loadavg)
log "load average before the runs: $LOAD1 (other work on this machine skews the numbers)"
FAILED=0
fail_line() {
  printf '{"label":"%s","workload":"%s","payload_bytes":%s,"subscriptions":1,"error":"%s"}\n' \
    "$1" "$2" "$3" "$4" >>"$RESULTS"
}
for rep in $(seq "$REPS"); do
  for s in "${PAIRS[@]}"; do start_setup "$s"; done
  for item in "${ITEMS[@]}"; do
    workload=${item%%:*}
    payload=${item##*:}
    for s in "${PAIRS[@]}"; do
      err=$WORK/loadgen.err
      limit=$(awk -v d="$DURATION" 'BEGIN { printf "%d", d + 60 }')
      if line=$(timeout "$limit" "$LOADGEN" run --proto "$(proto_of "$s")" \
        --pub-addr "$(pub_of "$s")" --sub-addr "$(sub_of "$s")" --workload "$workload" \
        --payload "$payload" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
        --broker-pid "$(pids_of "$s")" --label "$s" 2>"$err"); then
        echo "$line" >>"$RESULTS"
        rate=$(grep -o '"delivered_per_s":[0-9.e+]*' <<<"$line" | cut -d: -f2)
        extra=$(grep -o '"p50_us":[0-9.]*,"p99_us":[0-9.]*' <<<"$line" || true)
        log "rep $rep/$REPS $workload $payload B $s: $(printf '%.0f' "$rate") msg/s delivered $extra"
      else
        FAILED=$((FAILED + 1))
        msg=$(tail -n 1 "$err" | tr -d '"\\' | tr -cd '[:print:]')
        [[ -n $msg ]] || msg="loadgen timed out or crashed"
        fail_line "$s" "$workload" "$payload" "$msg"
        log "rep $rep/$REPS $workload $payload B $s: FAILED: $msg; restarting $s"
        stop_setup "$s"
        start_setup "$s"
      fi
    done
    if [[ $RAW == 1 && $item == rtt:* ]]; then
      # The transport's own round trip: ping-pong on one quinn stream, idle 1 ms in between.
      if line=$(timeout 60 "$QUINN_RAW" --pingpong 3000 --idle --payload "$payload" 2>"$WORK/quinn_raw.err"); then
        echo "$line" >>"$RESULTS"
        log "rep $rep/$REPS quinn-raw ping-pong $payload B: $(grep -o '"p50_us":[0-9.]*,"p99_us":[0-9.]*' <<<"$line")"
      else
        FAILED=$((FAILED + 1))
        fail_line quinn-raw rtt "$payload" "$(tail -n 1 "$WORK/quinn_raw.err" | tr -d '"\\' | tr -cd '[:print:]')"
        log "rep $rep/$REPS quinn-raw ping-pong: FAILED"
      fi
    fi
    if [[ $RAW == 1 && $item == one-to-one:1024 ]]; then
      if line=$(timeout 60 "$QUINN_RAW" --payload 1024 --duration "$DURATION" --warmup "$WARMUP" 2>"$WORK/quinn_raw.err"); then
        echo "$line" >>"$RESULTS"
        log "rep $rep/$REPS quinn-raw 1024 B: $(grep -o '"delivered_per_s":[0-9.e+]*' <<<"$line" | cut -d: -f2) msg/s"
      else
        FAILED=$((FAILED + 1))
        fail_line quinn-raw one-to-one 1024 "$(tail -n 1 "$WORK/quinn_raw.err" | tr -d '"\\' | tr -cd '[:print:]')"
        log "rep $rep/$REPS quinn-raw: FAILED"
      fi
    fi
  done
  for s in "${PAIRS[@]}"; do stop_setup "$s"; done

  # Subscription propagation on chains of meshgate nodes: chain-0 - chain-1 - ... ; the
  # subscriber on chain-0, one publisher on each other node.
  if [[ $PROPAGATION == 1 ]]; then
    for n in "${CHAIN_LENGTHS[@]}"; do
      pubs=()
      hops=()
      for i in $(seq 0 $((n - 1))); do
        base=$((B + 101 + 3 * i))
        if [[ $i == 0 ]]; then
          start_meshgate "chain-$i" "$base" $((base + 1)) $((base + 2))
        else
          start_meshgate "chain-$i" "$base" $((base + 1)) $((base + 2)) $((base - 1))
          pubs+=("127.0.0.1:$base")
          hops+=("$i")
        fi
      done
      for i in $(seq 0 $((n - 1))); do wait_ready "chain-$i" mesh_linked $((B + 102 + 3 * i)) "$n"; done
      probe mqtt "127.0.0.1:$((B + 101 + 3 * (n - 1)))" "127.0.0.1:$((B + 101))"
      if line=$(timeout 600 "$LOADGEN" propagation --sub-addr "127.0.0.1:$((B + 101))" \
        --pub-addrs "$(IFS=,; echo "${pubs[*]}")" --hops "$(IFS=,; echo "${hops[*]}")" \
        --rounds "$ROUNDS" --interval-ms 1 --label "meshgate-$n" --topology chain 2>"$WORK/loadgen.err"); then
        echo "$line" >>"$PROP"
        log "rep $rep/$REPS propagation, chain of $n: p50 $(grep -o '"p50_ms":[0-9.]*' <<<"$line" | cut -d: -f2) ms, p99 $(grep -o '"p99_ms":[0-9.]*' <<<"$line" | cut -d: -f2) ms"
      else
        FAILED=$((FAILED + 1))
        log "rep $rep/$REPS propagation, chain of $n: FAILED: $(tail -n 1 "$WORK/loadgen.err")"
      fi
      for i in $(seq $((n - 1)) -1 0); do stop_proc "chain-$i"; done
    done
  fi
done

{
  echo "## Mesh: $(date -u +%Y-%m-%d) on $(nproc) cores, loopback"
  echo
  echo "Command: \`benches/run-mesh.sh $ARGS\`; $REPS repetition(s) of ${DURATION} s (after ${WARMUP} s warm-up), setups interleaved; load average before: $LOAD1."
  echo
  echo "- meshgate $("$MESHGATE_BIN" --version | cut -d' ' -f2) (copy of the binary built $BUILT): publish on a, subscribe on b (b dials a)"
  echo "- nats-server $(nats-server --version | grep -o 'v[0-9][0-9.]*'): nats-route publishes on nr-1, subscribes on nr-2 (cluster route); nats-leaf publishes on the hub, subscribes on the leaf"
  echo "- quinn-raw: 1 KiB messages over one quinn 0.11 stream, in 256 KiB writes; round trip: 3,000 ping-pongs of $LAT_PAYLOAD B on one stream, 1 ms idle in between (not paced at $RATE msg/s)"
  echo
  if [[ -s $RESULTS ]]; then
    "$LOADGEN" summarize "$RESULTS" --order meshgate,nats-route,nats-leaf,quinn-raw --baseline meshgate --bytes
  fi
  if [[ -s $PROP ]]; then
    echo
    echo "Subscription propagation, SUBACK to the first delivery of each publisher's probes (chain, subscriber at one end):"
    echo
    "$LOADGEN" propagation-summary "$PROP"
  fi
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results: $RESULTS, $PROP; summary: $OUT/summary.md"

if [[ $FAILED -gt 0 ]]; then
  log "$FAILED run(s) failed"
  [[ $ALLOW_FAILURES == 1 ]] || exit 2
fi
