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
#
# /var/lib/faultwatch belongs to the service user, so root never follows a path in it: the new
# bundle is copied, checked, chowned and chmodded in a root-only staging folder beside it and
# renamed into place (mv -T), and a symlink planted there is moved aside, never followed.
#
# For tests (tests/test_deploy.py), never needed on a gateway; unset, nothing changes:
#   FAULTWATCH_ROOT  prefix for /opt/faultwatch, /etc/faultwatch, /var/lib/faultwatch and
#                    /etc/systemd/system (a throwaway root)
#   FAULTWATCH_VENV  an existing virtual environment with faultwatch[edge]: no venv, no pip
#   FAULTWATCH_USER  an existing user to own the state instead of `faultwatch` (the unit still
#                    says User=faultwatch)
# useradd, usermod, getent, id, chown and systemctl are looked up on PATH, so a test can put
# stubs first.
set -euo pipefail

ROOT="${FAULTWATCH_ROOT:-}"
ROOT="${ROOT%/}"
PREFIX="${ROOT}/opt/faultwatch"
CONFIG_DIR="${ROOT}/etc/faultwatch"
STATE_DIR="${ROOT}/var/lib/faultwatch"
UNIT_DIR="${ROOT}/etc/systemd/system"
UNIT=faultwatch-agent.service
SERVICE_USER="${FAULTWATCH_USER:-faultwatch}"
VENV="${FAULTWATCH_VENV:-}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "install-agent: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: sudo $0 CONFIG.toml BUNDLE (folder or .tar.gz)"
[[ ${EUID} -eq 0 ]] || die "must run as root (it creates a system user and installs a systemd unit); use sudo"
CONFIG="$(realpath "$1")"
BUNDLE="$(realpath "$2")"
[[ -f ${CONFIG} ]] || die "config ${CONFIG} not found"
[[ -e ${BUNDLE} ]] || die "bundle ${BUNDLE} not found"
if [[ -z ${VENV} ]]; then
    command -v python3 >/dev/null || die "python3 not found; apt install python3 python3-venv"
fi
command -v systemctl >/dev/null || die "systemctl not found; this script needs systemd"

echo "== user"
if ! id -u "${SERVICE_USER}" >/dev/null 2>&1; then
    useradd --system --home-dir "${STATE_DIR}" --no-create-home --shell /usr/sbin/nologin \
        --user-group "${SERVICE_USER}"
fi
if getent group audio >/dev/null; then
    usermod -a -G audio "${SERVICE_USER}"
fi
SERVICE_GROUP="$(id -gn "${SERVICE_USER}")"

if [[ -n ${VENV} ]]; then
    echo "== virtual environment ${VENV} (FAULTWATCH_VENV: used as is)"
    FAULTWATCH="${VENV}/bin/faultwatch"
    [[ -x ${FAULTWATCH} ]] || die "FAULTWATCH_VENV=${VENV} has no bin/faultwatch; pip install '.[edge]' there"
else
    echo "== virtual environment in ${PREFIX}/.venv"
    install -d -m 0755 "${PREFIX}"
    [[ -x ${PREFIX}/.venv/bin/python ]] || python3 -m venv "${PREFIX}/.venv"
    "${PREFIX}/.venv/bin/pip" install --quiet --upgrade pip
    "${PREFIX}/.venv/bin/pip" install --quiet "${REPO}[edge]"
    if "${PREFIX}/.venv/bin/python" -c "import torch" 2>/dev/null; then
        echo "install-agent: note: torch is installed in ${PREFIX}/.venv; the agent never imports it" >&2
    fi
    FAULTWATCH="${PREFIX}/.venv/bin/faultwatch"
fi

echo "== bundle -> ${STATE_DIR}/bundle"
[[ ${BUNDLE}/ != "$(realpath -m "${STATE_DIR}")"/* ]] \
    || die "bundle ${BUNDLE} is inside ${STATE_DIR}, which the service user can change; copy it elsewhere first"
"${FAULTWATCH}" agent verify-bundle "${BUNDLE}"
# The state dir's parent must be root's alone, so that nobody else can swap the state dir for a
# symlink; the state dir itself must be a real directory (install -d would follow a symlink).
PARENT="${STATE_DIR%/*}"
mkdir -p "${PARENT}"
[[ -d ${PARENT} && ! -L ${PARENT} && $(stat -c %u "${PARENT}") == 0 ]] \
    || die "${PARENT} must be a directory owned by root"
(( (8#$(stat -c %a "${PARENT}") & 8#022) == 0 )) \
    || die "${PARENT} is writable by group or others; chmod go-w ${PARENT}"
if [[ -L ${STATE_DIR} || (-e ${STATE_DIR} && ! -d ${STATE_DIR}) ]]; then
    die "${STATE_DIR} is a symlink or not a directory; remove it and run again"
fi
install -d -m 0750 -o "${SERVICE_USER}" -g "${SERVICE_GROUP}" "${STATE_DIR}"
# Stage beside the state dir (root only, 0700, same file system: the final mv is a rename).
STAGING="$(mktemp -d "${PARENT}/.faultwatch-bundle.XXXXXX")"
trap 'rm -rf "${STAGING}"' EXIT
[[ $(stat -c %d "${STAGING}") == $(stat -c %d "${STATE_DIR}") ]] \
    || die "${STATE_DIR} is on another file system than ${PARENT}; cannot rename the bundle into place"
NEW="${STAGING}/bundle"
mkdir -m 0700 "${NEW}"
if [[ -d ${BUNDLE} ]]; then
    cp -a "${BUNDLE}/." "${NEW}/"
else
    tar -xzf "${BUNDLE}" -C "${NEW}" --strip-components=1 --no-same-owner --no-same-permissions
fi
# Plain files and folders only: no symlink, device node or hard link for chown to act through.
ODD="$(find -P "${NEW}" \( \( ! -type f ! -type d \) -o \( -type f -links +1 \) \) -printf '%P' -quit)"
[[ -z ${ODD} ]] || die "bundle ${BUNDLE} holds more than plain files and folders: ${ODD} (a symlink, device or hard link)"
"${FAULTWATCH}" agent verify-bundle "${NEW}" >/dev/null
chown -R -P --no-dereference "${SERVICE_USER}:${SERVICE_GROUP}" "${NEW}"
find -P "${NEW}" -type d -exec chmod 00750 {} +
find -P "${NEW}" -type f -exec chmod 00640 {} +
# mv -T renames the entry itself: a symlink at bundle or bundle.old is moved or replaced, never
# followed, and a non-empty directory there makes mv fail instead of moving into it.
rm -rf "${STATE_DIR}/bundle.old"
if [[ -e ${STATE_DIR}/bundle || -L ${STATE_DIR}/bundle ]]; then
    mv -T "${STATE_DIR}/bundle" "${STATE_DIR}/bundle.old" \
        || die "cannot move ${STATE_DIR}/bundle aside to bundle.old (did something else write there?)"
fi
mv -T "${NEW}" "${STATE_DIR}/bundle" \
    || die "cannot rename the new bundle to ${STATE_DIR}/bundle (did something else write there?)"
rm -rf "${STAGING}"
trap - EXIT

echo "== config -> ${CONFIG_DIR}/agent.toml"
install -d -m 0755 "${CONFIG_DIR}"
if [[ -f ${CONFIG_DIR}/agent.toml ]] && ! cmp -s "${CONFIG}" "${CONFIG_DIR}/agent.toml"; then
    cp -p "${CONFIG_DIR}/agent.toml" "${CONFIG_DIR}/agent.toml.bak"
fi
install -m 0640 -o root -g "${SERVICE_GROUP}" "${CONFIG}" "${CONFIG_DIR}/agent.toml"
"${FAULTWATCH}" agent check-config "${CONFIG_DIR}/agent.toml" --bundle

echo "== systemd unit"
mkdir -p "${UNIT_DIR}"
install -m 0644 "${REPO}/deploy/${UNIT}" "${UNIT_DIR}/${UNIT}"
systemctl daemon-reload
systemctl enable "${UNIT}"
systemctl restart "${UNIT}"
echo "installed: systemctl status ${UNIT}; journalctl -u ${UNIT} -f"
