#!/usr/bin/env bash
# The main job on the embedded demo model: review the changes between two dated sample mosaics
# through the QGIS plugin's Processing algorithm, run headless by qgis_process.
#
#   ./scripts/demo.sh [OUT_DIR]        (default out/demo)
#
# 1. set-up (QGIS from apt, .venv) as in scripts/setup.sh
# 2. two dated mosaics of one area, the after one in another CRS and resolution with a nodata hole
#    (`unirs synth-mosaic`; ground truth of the changed tiles in changes.json)
# 3. the plugin enabled in a throw-away QGIS profile, `qgis_process.bin run unirs:review_changes`
# 4. the changed tiles, best first, with their captions; scored against the ground truth
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
out="$(realpath -m "${1:-out/demo}")"
python=.venv/bin/python
export QT_QPA_PLATFORM=offscreen TOKENIZERS_PARALLELISM=false

model="${UNIRS_MODEL:-$root/models/demo}"
if [ ! -f "$model/config.json" ]; then
  echo "[demo] no model at $model" >&2
  exit 1
fi
echo "[demo] model: $model"

mosaics="$out/mosaics"
if [ ! -f "$mosaics/changes.json" ]; then
  echo "[demo] writing two dated sample mosaics -> $mosaics"
  $python -m unirs_engine.cli synth-mosaic --out "$mosaics" --size 2048 --tile 256 --seed 3 \
    --after-crs EPSG:3857 --after-res-factor 1.5 --nodata-hole
fi
before=$(ls "$mosaics"/before_*.tif)
after=$(ls "$mosaics"/after_*.tif)

# A throw-away QGIS profile whose plugin folder links to this checkout; made anew every run
# (`plugins enable` fails on a profile where the plugin is already enabled).
profile="$out/qgis-profile"
plugins="$profile/profiles/default/python/plugins"
rm -rf "$profile"
mkdir -p "$plugins"
ln -sfn "$root" "$plugins/unirs"
export QGIS_CUSTOM_CONFIG_PATH="$profile" UNIRS_MODEL="$model" UNIRS_ENGINE_PYTHON="$root/.venv/bin/python"
# Debian's /usr/bin/qgis_process wrapper is broken on bookworm: call the binary.
qgis_process.bin plugins enable unirs >/dev/null

echo "[demo] qgis_process.bin run unirs:review_changes"
gpkg="$out/review.gpkg"
rm -f "$gpkg" "$gpkg-wal" "$gpkg-shm"  # a fresh review every run (another model would be refused)
qgis_process.bin run unirs:review_changes -- BEFORE="$before" AFTER="$after" TILE_SIZE=256 \
  OUTPUT="$gpkg"

$python scripts/demo_report.py "$gpkg" "$mosaics/changes.json"
