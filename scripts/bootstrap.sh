#!/usr/bin/env bash
# Install what gitorch needs on a Debian machine (run as root) into ./.venv. Idempotent and quick
# when everything is already there. Sourced by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages: Python, Git, and what real lab nodes need (sshd, iproute2, nftables, dig,
# podman + runc with busybox-static for the container image tests, arping for LoadBalancer addresses,
# age for the SOPS interoperability test, docker-registry, the CNCF registry, for image pulls,
# haproxy for Ingress with wrk to load it in bench/ingress.py, chromium + chromium-driver for the
# dashboard's browser tests, and gnupg for OpenPGP-signed commits).
APT_PACKAGES=(python3 python3-venv python3-pip python3-dev git openssh-server openssh-client
              iproute2 nftables iptables dnsutils procps ca-certificates postgresql
              podman runc busybox-static iputils-arping haproxy wrk age docker-registry
              chromium chromium-driver gnupg ${GITORCH_EXTRA_APT:-})
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "gitorch: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "gitorch: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${GITORCH_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when the project's dependency list changed.
stamp=.venv/.gitorch-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
