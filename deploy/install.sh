#!/usr/bin/env bash
# Installs edge-mnv2 as a systemd service on the board (run as root, from a checkout or an unpacked
# release):
#   sudo deploy/install.sh --binary target/aarch64-unknown-linux-gnu/release/edge-mnv2 \
#        --head edge-mnv2-out [--models DIR] [--config deploy/config.toml]
# Copies the binary to /usr/local/bin, the head to /var/lib/edge-mnv2/head, the models to
# /var/lib/edge-mnv2/models (when given), the config to /etc/edge-mnv2/config.toml (an existing
# config is kept), the unit to /etc/systemd/system, then reloads systemd and enables --now.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
binary="" head="" models="" config="$here/config.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --head) head="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (sudo)"
[ -x "$binary" ] || die "--binary: '$binary' is not an executable file"
[ -n "$head" ] || die "--head: give the directory finetune wrote (or its head.json)"
[ -d "$head" ] && head="$head/head.json"
[ -f "$head" ] || die "--head: no head file at '$head'"
[ -f "$config" ] || die "--config: no file at '$config'"

state=/var/lib/edge-mnv2
# StateDirectory= with DynamicUser lives in /var/lib/private and is linked from /var/lib.
if [ -L "$state" ] || [ ! -e "$state" ]; then state_real=/var/lib/private/edge-mnv2; else state_real="$state"; fi

install -D -m 0755 "$binary" /usr/local/bin/edge-mnv2
install -d -m 0700 /var/lib/private
install -d -m 0750 "$state_real/head"
install -m 0640 "$head" "$state_real/head/head.json"
if [ -n "$models" ]; then
  install -d -m 0750 "$state_real/models"
  cp -r "$models"/. "$state_real/models/"
fi
[ -e "$state" ] || ln -s private/edge-mnv2 "$state"
install -d -m 0755 /etc/edge-mnv2
if [ -e /etc/edge-mnv2/config.toml ]; then
  echo "install.sh: keeping the existing /etc/edge-mnv2/config.toml"
else
  install -m 0644 "$config" /etc/edge-mnv2/config.toml
fi
install -D -m 0644 "$here/edge-mnv2.service" /etc/systemd/system/edge-mnv2.service
systemctl daemon-reload
systemctl enable --now edge-mnv2.service
systemctl --no-pager status edge-mnv2.service || true
echo "install.sh: done. Logs: journalctl -u edge-mnv2 -f; health: curl -s localhost:8080/healthz"
