#!/usr/bin/env bash
# Runs every test of the workspace: unit, property and integration tests (the integration tests
# start the real `meshgate` binary and drive it with rumqttc, mosquitto's clients and raw sockets).
#
# Installs what the tests need when it is missing: Debian's mosquitto-clients (apt) and, if
# available, uses cargo-nextest (each test in its own process); otherwise `cargo test`.
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

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
