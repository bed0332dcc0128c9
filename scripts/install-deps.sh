#!/usr/bin/env bash
# Installs what Gantry and its tests need on Debian 12. Idempotent; needs root.
set -euo pipefail
PKGS=(nftables tini etcd-server protobuf-compiler libprotobuf-dev e2fsprogs crun runc skopeo docker-registry busybox-static iproute2 apache2-utils python3 python3-venv openssl ca-certificates prometheus chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # Packages with daemons (prometheus, docker-registry) are not started on install: the
  # tests start their own, on loopback ports of their choosing.
  policy=/usr/sbin/policy-rc.d
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; trap 'rm -f "$policy"' EXIT; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's package may start a registry on :5000; Gantry's tests start their own.
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
# The real AWS CLI and boto3 for the end-to-end tests, in a venv beside the sources.
cd "$(dirname "$0")/.."
req=tests/e2e/requirements.txt
if [ ! -x .venv/bin/python ] || ! cmp -s "$req" .venv/requirements.txt; then
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" .venv/requirements.txt
fi
# The fuzz targets' short run: libFuzzer through cargo-fuzz, on the nightly toolchain.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
