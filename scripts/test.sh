#!/usr/bin/env bash
# Runs every test of the workspace: unit, property and integration tests (the integration tests
# start the real `meshgate` binary and drive it with rumqttc, mosquitto's clients and raw sockets).
#
# Installs what the tests need when it is missing: Debian's mosquitto-clients and
# rabbitmq-server (apt), and tansu, a Kafka-protocol broker (cargo install, about 4 minutes
# once; kept in ~/.cargo/bin for later runs). Uses cargo-nextest if available (each test in its
# own process); otherwise `cargo test`. The tests start tansu and RabbitMQ themselves; a
# RabbitMQ they started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  # Keep package scripts from starting services on a machine without systemd.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v mosquitto_sub >/dev/null || ! command -v mosquitto_pub >/dev/null; then
  echo "== installing mosquitto-clients (the MQTT clients the tests use)"
  apt_install mosquitto-clients
fi

if ! command -v rabbitmq-server >/dev/null; then
  echo "== installing rabbitmq-server (the AMQP broker the bridge tests use)"
  apt_install rabbitmq-server
fi

# tansu 0.6.0 with the dynostore feature: without it, its only storage engine drops every
# record. A debug build takes about 4 minutes instead of 13 and is fast enough for tests.
tansu_ok() { "$1" --help 2>/dev/null | grep -q 'Storage engines: dynostore'; }
TANSU=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
if ! tansu_ok "$TANSU"; then
  echo "== installing tansu 0.6.0 (the Kafka-protocol broker the bridge tests use; ~4 minutes)"
  CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version 0.6.0 --locked --features dynostore --debug
  TANSU="$HOME/.cargo/bin/tansu"
  tansu_ok "$TANSU" || { echo "tansu was built without its storage engine" >&2; exit 1; }
fi
export PATH="$(dirname "$TANSU"):$PATH"

rabbit_was_up=0
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && rabbit_was_up=1
stop_rabbit() {
  if [ "$rabbit_was_up" = 0 ] && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    RABBITMQ_NODENAME=rabbit@localhost rabbitmqctl -n rabbit@localhost -q shutdown >/dev/null 2>&1 || true
  fi
}

rc=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || rc=$?
else
  cargo test --workspace --no-fail-fast "$@" || rc=$?
fi
stop_rabbit
exit $rc
