#!/usr/bin/env bash
# Build the TensorRT engine on the Jetson from an edgeeff output folder (it is copied there).
#   bash jetson_build_engine.sh [FOLDER] [int8|fp16]
# FOLDER defaults to this script's folder; the precision to the target's (manifest.json).
# The trtexec command comes from manifest.json, in the form for the installed TensorRT:
# --memPoolSize from TensorRT 8.4 (JetPack 5/6), --workspace before (JetPack 4.6, TensorRT 8.2).
# Env: TRTEXEC (path to trtexec), TRT_VERSION (skip detection, e.g. 8.2.1 or 10.3.0).
set -euo pipefail
DIR=${1:-$(cd "$(dirname "$0")" && pwd)}
PRECISION=${2:-}
[ -f "$DIR/manifest.json" ] || { echo "error: $DIR/manifest.json not found: pass the edgeeff output folder" >&2; exit 2; }
TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
[ -x "$TRTEXEC" ] || { echo "error: trtexec not found (JetPack installs it as /usr/src/tensorrt/bin/trtexec); set TRTEXEC=/path/to/trtexec" >&2; exit 3; }

detect_version() {
  python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null && return
  dpkg-query -W -f='${Version}\n' tensorrt libnvinfer-bin 2>/dev/null | grep -m1 -E '^[0-9]' && return
  # trtexec's banner: "[TensorRT v8201]" = 8.2.1, "[TensorRT v100300]" = 10.3.0
  "$TRTEXEC" --help 2>&1 | grep -m1 -oE 'TensorRT v[0-9]+' | sed -E 's/TensorRT v//; s/^([0-9])([0-9])([0-9]{2})$/\1.\2.\3/; s/^([0-9]{2})([0-9]{2})([0-9]{2})$/\1.\2.\3/'
}
VERSION=${TRT_VERSION:-$(detect_version || true)}
[ -n "$VERSION" ] || { echo "error: cannot tell the TensorRT version; set TRT_VERSION=" >&2; exit 3; }

ARGS=$(python3 - "$DIR/manifest.json" "$VERSION" "$PRECISION" <<'PY'
import json, sys
manifest, version, precision = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
build = next(a["build"] for a in manifest["artifacts"] if a.get("build"))
precision = precision or build["precision"]
major, minor = (int(x) for x in (version.split(".") + ["0"])[:2])
key = "tensorrt>=8.4" if (major, minor) >= (8, 4) else "tensorrt<8.4"
if precision not in build["commands"]:
    sys.exit(f"error: precision {precision!r}: choose {', '.join(build['commands'])}")
print(build["commands"][precision][key].split(" ", 1)[1])
PY
)
cd "$DIR"
echo "TensorRT $VERSION: $TRTEXEC $ARGS"
# shellcheck disable=SC2086  # the arguments are space-separated flags without spaces
exec "$TRTEXEC" $ARGS
