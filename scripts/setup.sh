#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: QGIS from apt (when missing and root),
# a venv from /usr/bin/python3 that sees Debian's qgis, numpy, GDAL and rasterio, then pip installs.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is done).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

apt_pkgs=(qgis python3-qgis qgis-providers xvfb python3-rasterio python3-pil python3-venv python3-gdal gdal-bin openjdk-17-jre-headless)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# Keep Debian's numpy (QGIS and GDAL are built against it): pin it for every pip call.
constraints="$root/.venv/constraints.txt"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv (system site packages: qgis, numpy, rasterio)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
/usr/bin/python3 -c "import numpy; print(f'numpy=={numpy.__version__}')" > "$constraints"

stamp=.venv/.unirs-installed
want="$(cat pyproject.toml unirs_engine/requirements/*.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] pip install (the engine's requirements from unirs_engine/requirements/, all extras)"
  log=.venv/pip.log
  pip_install() { .venv/bin/pip install -q --disable-pip-version-check -c "$constraints" "$@" >>"$log" 2>&1 \
    || { grep -v "is ignored" "$log" | tail -20 >&2; echo "[setup] pip install $* failed" >&2; exit 1; }; }
  pip_install -e ".[eval,train,test,distributed]"
  .venv/bin/python -c "import torch, transformers, rasterio, av, ray, qgis.core" \
    || { echo "[setup] the venv is incomplete" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
