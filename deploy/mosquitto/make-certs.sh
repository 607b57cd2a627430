#!/usr/bin/env bash
# Make the plant's MQTT certificates with openssl: a CA, the broker's certificate and one client
# certificate per identity (a gateway's mqtt.device, or the SCADA host).
#
#   make-certs.sh [-o DIR] [-b HOST[,NAME|IP...]] [-d DAYS] [IDENTITY ...]
#
#   -o DIR    where the files go (default: ./certs); made private (0700)
#   -b HOSTS  also make broker.crt/broker.key whose subjectAltName lists every name or IP address
#             clients use to reach the broker (they check it): -b mqtt.plant.example,10.0.0.5
#   -d DAYS   validity of the broker and client certificates (default 825; the CA: 3650)
#   IDENTITY  make IDENTITY.crt/IDENTITY.key with CN=IDENTITY. The broker takes the CN as the MQTT
#             username (use_identity_as_username) and the ACL puts it in the device's topics, so
#             it must equal the gateway's mqtt.device: letters, digits, '_', '.', '-'.
#
# DIR/ca.crt and DIR/ca.key are made on the first run and reused afterwards, so a later run adds
# devices to the same plant. Keep ca.key offline: whoever holds it can mint any identity.
# Existing certificates are never overwritten (delete a pair to reissue it; revoke the old one
# with a CRL, see crlfile in mosquitto.conf). Keys are EC P-256, unencrypted, mode 0600.
#
# Example, a broker and two gateways and the SCADA host:
#   make-certs.sh -o certs -b mqtt.plant.example pump-7 fan-2 scada
#   scp certs/ca.crt certs/pump-7.crt certs/pump-7.key pump-7:/etc/faultwatch/tls/
set -euo pipefail

out=certs
hosts=""
days=825
usage() { sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts "o:b:d:h" opt; do
  case "$opt" in
    o) out=$OPTARG ;;
    b) hosts=$OPTARG ;;
    d) days=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $days =~ ^[1-9][0-9]*$ ]] || { echo "make-certs.sh: -d needs a number of days, got '$days'" >&2; exit 2; }
[[ -n $hosts || $# -gt 0 ]] || usage
for identity in "$@"; do
  if [[ ! $identity =~ ^[A-Za-z0-9_.-]+$ ]]; then
    echo "make-certs.sh: identity '$identity' must be one MQTT topic level of letters, digits," \
      "'_', '.', '-' (it is the device's mqtt.device)" >&2
    exit 2
  fi
  [[ $identity != ca && $identity != broker ]] || {
    echo "make-certs.sh: '$identity' is reserved for the CA and broker files; pick another" >&2
    exit 2
  }
done
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }

umask 077
mkdir -p "$out"
chmod 700 "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

refuse_existing() {  # never replace a key a device may already use
  if [[ -e $out/$1.crt || -e $out/$1.key ]]; then
    echo "make-certs.sh: $out/$1.crt or .key exists; delete both to reissue" >&2
    exit 1
  fi
}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

issue() {  # issue NAME CN USAGE [SUBJECT_ALT_NAMES]: NAME.key and NAME.crt, signed by the CA
  local name=$1 cn=$2 usage=$3 san=${4-}
  new_key "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$usage"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } > "$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
    -extfile "$work/$name.ext" -out "$out/$name.crt" 2>/dev/null
  chmod 644 "$out/$name.crt"
}

if [[ ! -e $out/ca.crt ]]; then
  new_key "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=faultwatch plant CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$out/ca.crt"
  chmod 644 "$out/ca.crt"
  echo "made CA $out/ca.crt (keep $out/ca.key offline)"
fi

if [[ -n $hosts ]]; then
  refuse_existing broker
  san=""
  IFS=, read -ra names <<< "$hosts"
  for name in "${names[@]}"; do
    [[ -n $name ]] || continue
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
  done
  issue broker "${names[0]}" serverAuth "${san%,}"
  echo "made broker $out/broker.crt for ${san%,}"
fi

for identity in "$@"; do
  refuse_existing "$identity"
  issue "$identity" "$identity" clientAuth
  echo "made client $out/$identity.crt (CN=$identity)"
done
