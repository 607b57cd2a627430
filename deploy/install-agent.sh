#!/usr/bin/env bash
# Install (or update) the faultwatch gateway agent as a systemd service. Idempotent: run it again
# after a git pull, a new config or a new bundle.
#
#   sudo deploy/install-agent.sh CONFIG.toml BUNDLE
#
# CONFIG.toml  agent config (e.g. firmware_configs/raspberry-pi-4.toml, edited for this device)
#              -> /etc/faultwatch/agent.toml (an existing one is kept as agent.toml.bak)
# BUNDLE       model bundle folder or .tar.gz from `faultwatch export`
#              -> /var/lib/faultwatch/bundle (verified before it replaces the old one)
#
# Creates the `faultwatch` system user (in the audio group), a virtual environment in
# /opt/faultwatch/.venv with `pip install '.[edge]'` from this checkout (numpy, onnxruntime,
# paho-mqtt, sounddevice: no torch), installs and enables faultwatch-agent.service, and
# (re)starts it. Needs python3-venv and, for the sounddevice source, libportaudio2.
set -euo pipefail

PREFIX=/opt/faultwatch
CONFIG_DIR=/etc/faultwatch
STATE_DIR=/var/lib/faultwatch
UNIT=faultwatch-agent.service
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "install-agent: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: sudo $0 CONFIG.toml BUNDLE (folder or .tar.gz)"
[[ ${EUID} -eq 0 ]] || die "must run as root (it creates a system user and installs a systemd unit); use sudo"
CONFIG="$(realpath "$1")"
BUNDLE="$(realpath "$2")"
[[ -f ${CONFIG} ]] || die "config ${CONFIG} not found"
[[ -e ${BUNDLE} ]] || die "bundle ${BUNDLE} not found"
command -v python3 >/dev/null || die "python3 not found; apt install python3 python3-venv"
command -v systemctl >/dev/null || die "systemctl not found; this script needs systemd"

echo "== user"
if ! id -u faultwatch >/dev/null 2>&1; then
    useradd --system --home-dir "${STATE_DIR}" --no-create-home --shell /usr/sbin/nologin \
        --user-group faultwatch
fi
if getent group audio >/dev/null; then
    usermod -a -G audio faultwatch
fi

echo "== virtual environment in ${PREFIX}/.venv"
install -d -m 0755 "${PREFIX}"
[[ -x ${PREFIX}/.venv/bin/python ]] || python3 -m venv "${PREFIX}/.venv"
"${PREFIX}/.venv/bin/pip" install --quiet --upgrade pip
"${PREFIX}/.venv/bin/pip" install --quiet "${REPO}[edge]"
if "${PREFIX}/.venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "install-agent: note: torch is installed in ${PREFIX}/.venv; the agent never imports it" >&2
fi
FAULTWATCH="${PREFIX}/.venv/bin/faultwatch"

echo "== bundle -> ${STATE_DIR}/bundle"
install -d -m 0750 -o faultwatch -g faultwatch "${STATE_DIR}"
"${FAULTWATCH}" agent verify-bundle "${BUNDLE}"
STAGING="$(mktemp -d "${STATE_DIR}/.bundle-new.XXXXXX")"
trap 'rm -rf "${STAGING}"' EXIT
if [[ -d ${BUNDLE} ]]; then
    cp -a "${BUNDLE}/." "${STAGING}/"
else
    tar -xzf "${BUNDLE}" -C "${STAGING}" --strip-components=1 --no-same-owner
fi
"${FAULTWATCH}" agent verify-bundle "${STAGING}" >/dev/null
rm -rf "${STATE_DIR}/bundle.old"
[[ -d ${STATE_DIR}/bundle ]] && mv "${STATE_DIR}/bundle" "${STATE_DIR}/bundle.old"
mv "${STAGING}" "${STATE_DIR}/bundle"
trap - EXIT
chown -R faultwatch:faultwatch "${STATE_DIR}/bundle"
chmod -R u=rwX,g=rX,o= "${STATE_DIR}/bundle"

echo "== config -> ${CONFIG_DIR}/agent.toml"
install -d -m 0755 "${CONFIG_DIR}"
if [[ -f ${CONFIG_DIR}/agent.toml ]] && ! cmp -s "${CONFIG}" "${CONFIG_DIR}/agent.toml"; then
    cp -p "${CONFIG_DIR}/agent.toml" "${CONFIG_DIR}/agent.toml.bak"
fi
install -m 0640 -o root -g faultwatch "${CONFIG}" "${CONFIG_DIR}/agent.toml"
"${FAULTWATCH}" agent check-config "${CONFIG_DIR}/agent.toml" --bundle

echo "== systemd unit"
install -m 0644 "${REPO}/deploy/${UNIT}" "/etc/systemd/system/${UNIT}"
systemctl daemon-reload
systemctl enable "${UNIT}"
systemctl restart "${UNIT}"
echo "installed: systemctl status ${UNIT}; journalctl -u ${UNIT} -f"
