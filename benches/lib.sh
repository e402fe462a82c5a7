# Helpers shared by the benchmark scripts (run-load.sh, run-mesh.sh, run-qos1.sh,
# run-guaranteed-mesh.sh; sourced, not run). The sourcing script sets LOG_PREFIX and WORK (its
# output directory, where each process logs to NAME.log), and records each process it starts in
# PIDS[NAME]. The mesh helpers further down also use MESHGATE_BIN and WORK/tls.

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

# install_peers: installs what is missing of mosquitto, mosquitto-clients, nats-server (apt, as
# root, no service started) and rumqttd 0.20.0 (cargo install); with INSTALL=0 it fails instead.
install_peers() {
  local apt_pkgs=()
  command -v mosquitto >/dev/null || apt_pkgs+=(mosquitto)
  command -v mosquitto_pub >/dev/null || apt_pkgs+=(mosquitto-clients)
  command -v nats-server >/dev/null || apt_pkgs+=(nats-server)
  if [[ ${#apt_pkgs[@]} -gt 0 ]]; then
    [[ $INSTALL == 1 ]] || die "missing ${apt_pkgs[*]} (and --no-install given)"
    [[ $(id -u) == 0 ]] || die "missing ${apt_pkgs[*]}: run as root, or: sudo apt-get install ${apt_pkgs[*]}"
    log "installing ${apt_pkgs[*]} (apt)"
    # Keep the packages' post-install scripts from starting services on default ports.
    local had_policy=0
    [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1 && cp -p /usr/sbin/policy-rc.d "/usr/sbin/policy-rc.d.$LOG_PREFIX"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"; } >&2 || rc=$?
    if [[ $had_policy == 1 ]]; then mv "/usr/sbin/policy-rc.d.$LOG_PREFIX" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
    [[ $rc == 0 ]] || die "apt-get install ${apt_pkgs[*]} failed"
  fi
  if ! command -v rumqttd >/dev/null; then
    [[ $INSTALL == 1 ]] || die "missing rumqttd (and --no-install given)"
    # Not --locked: rumqttd 0.20.0's lockfile pins metrics 0.22.1, which newer rustc rejects
    # (E0521); the resolver picks a fixed 0.22.x.
    log "installing rumqttd 0.20.0 (cargo install, about 4 minutes)"
    cargo install rumqttd --version 0.20.0 >&2 || die "cargo install rumqttd failed"
  fi
}

# ---------------------------------------------------------------------------------------------
# Mesh pairs (run-mesh.sh, run-guaranteed-mesh.sh)

# check_free PORT...: nobody answers on these ports yet.
check_free() {
  local p
  for p in "$@"; do
    ! port_open "$p" || die "port $p is already in use (move the script's port base)"
  done
}

# probe PROTO PUB_ADDR SUB_ADDR: a message published at PUB_ADDR arrives at SUB_ADDR (LOADGEN).
probe() {
  local s
  s=$("$LOADGEN" probe --proto "$1" --pub-addr "$2" --sub-addr "$3" --timeout 15) \
    || die "no probe from $2 reached $3 within 15 s"
  log "probe $2 -> $3 arrived after $(awk -v s="$s" 'BEGIN { printf "%.1f", s * 1000 }') ms"
}

# mesh_linked HTTP_PORT N: /v1/mesh lists N nodes and every link of this node is up.
mesh_linked() {
  local json nodes
  json=$(curl -sf --max-time 1 "http://127.0.0.1:$1/v1/mesh") || return 1
  nodes=$(grep -o '"nodes":\[[^]]*\]' <<<"$json" | grep -o '"[^"]*"' | grep -vc '"nodes"') || return 1
  [[ $nodes -ge $2 ]] || return 1
  ! grep -q '"state":"[^u][^"]*"' <<<"$json"
}

# start_meshgate NAME MQTT HTTP MESH [PEER_MESH_PORT]: a node with data in WORK/data-NAME (kept
# across restarts; remove it for a fresh node) and the mesh certificates of WORK/tls. MESHGATE_*
# variables set before the call (e.g. MESHGATE_STORE__COMMIT=always start_meshgate ...) reach it.
start_meshgate() {
  local name=$1 mqtt=$2 http=$3 mesh=$4 peer=${5:-}
  check_free "$mqtt" "$http"
  mkdir -p "$WORK/data-$name"
  local args=(run --name "$name" --mqtt "127.0.0.1:$mqtt" --http "127.0.0.1:$http"
    --mesh "127.0.0.1:$mesh" --tls-dir "$WORK/tls" --data-dir "$WORK/data-$name")
  [[ -z $peer ]] || args+=(--peer "127.0.0.1:$peer")
  "$MESHGATE_BIN" "${args[@]}" >>"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
  wait_ready "$name" http_ok "http://127.0.0.1:$http/healthz"
  wait_ready "$name" port_open "$mqtt"
}

# start_nats NAME CONFIG_TEXT CLIENT_PORT HTTP_PORT
start_nats() {
  local name=$1 conf=$2 port=$3 http=$4
  check_free "$port" "$http"
  printf '%s\n' "$conf" >"$WORK/$name.conf"
  nats-server -c "$WORK/$name.conf" >>"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
  wait_ready "$name" http_ok "http://127.0.0.1:$http/healthz"
}

routez_up() { curl -sf --max-time 1 "http://127.0.0.1:$1/routez" | grep -Eq '"num_routes": *[1-9]'; }
leafz_up() { curl -sf --max-time 1 "http://127.0.0.1:$1/leafz" | grep -Eq '"leafnodes": *[1-9]'; }
