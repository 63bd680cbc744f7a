#!/usr/bin/env bash
# Create or refresh .venv at the repository root with the platform and its tools.
#   EMOLA_EXTRAS   extras to install (default: cpu,dev). GPU images use gpu,dev.
#   EMOLA_UNPINNED 1: the newest versions pyproject's ranges allow instead of constraints.txt's.
#   EMOLA_TORCH    torch requirement installed first (default: torch==2.13.0, the CPU
#                  build on these machines); everything else is then constrained to it,
#                  so no other package can swap in a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${EMOLA_EXTRAS:-cpu,dev}"
torch_req="${EMOLA_TORCH:-torch==2.13.0}"
python="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
constraints="$(mktemp)"; trap 'rm -f "$constraints"' EXIT
echo "$torch_req" > "$constraints"
"${pip[@]}" install "$torch_req" 2> >(grep -v "^WARNING: Location" >&2)
# constraints.txt: the versions the tests ran on (EMOLA_UNPINNED=1: the newest the ranges allow).
pins=(); [ "${EMOLA_UNPINNED:-0}" = 1 ] || pins=(-c constraints.txt)
"${pip[@]}" install -c "$constraints" "${pins[@]}" -e ".[${extras}]" 2> >(grep -v "^WARNING: Location" >&2)
# The demo page test drives headless Chromium: Debian's package (Playwright never downloads one).
if [ "${EMOLA_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    { $sudo apt-get install -y -q chromium >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium >/dev/null 2>&1; }; } ||
        echo "setup: could not install chromium; the demo page test will fail until it is installed" >&2
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import emola; print("emola", emola.__version__)'))"
