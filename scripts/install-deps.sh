#!/usr/bin/env bash
# Installs what Gantry and its tests need on Debian 12. Idempotent; needs root.
set -euo pipefail
PKGS=(crun runc skopeo docker-registry busybox-static iproute2 apache2-utils python3 openssl ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's package may start a registry on :5000; Gantry's tests start their own.
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
