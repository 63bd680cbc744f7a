#!/usr/bin/env bash
# Ray for a GPU machine that has no package registry and takes 64 MiB per call: a trimmed wheel.
#   bash scripts/device_ray.sh [PYTHON_VERSION] [OUT]   (default 3.12 and .device-ray/: about 39 MB)
# The wheel of the ray version in .venv, for that Python, without what Ray Train, Ray Data and the job
# runner never load: the Java jar, RLlib, the C++ API, Ray LLM, the tests, the web client's source maps;
# its three native binaries stripped of symbols. Beside it, the wheels of Ray's own requirements that a
# CUDA PyTorch image usually lacks (click, jsonschema, msgpack, protobuf, requests, tensorboardX).
# On the GPU machine (two calls into the same warm machine: Ray and the project's other wheels do not
# fit one call together): carry .device-ray, run `bash .device-ray/install.sh`, which installs into
# .device-site/ (ignored, kept on the machine between calls); then carry the other wheels and run
# with PYTHONPATH=$PWD/.device-site:... (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
tag="cp${py/./}"
version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('ray'))")
out="$(realpath -m "${2:-.device-ray}")"
if [ -d .git/info ]; then
    for ignored in /.device-ray/ /.device-site/; do
        grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
    done
fi
rm -rf "$out" && mkdir -p "$out/whl"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
plat=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
pip=(.venv/bin/python -m pip --disable-pip-version-check -q download --no-deps --only-binary=:all:
     --python-version "$py" --implementation cp "${plat[@]}")
"${pip[@]}" -d "$work" "ray==$version" 2> >(grep -v "^WARNING" >&2)
wheel=$(ls "$work"/ray-*.whl)
mkdir "$work/tree" && (cd "$work/tree" && unzip -q "$wheel")
(cd "$work/tree/ray" && rm -rf jars rllib cpp llm tests && find . -type d -name tests -prune -exec rm -rf {} + &&
    find dashboard/client/build -name "*.map" -delete)   # the dashboard serves the State API: its page stays
for binary in _raylet.so core/src/ray/gcs/gcs_server core/src/ray/raylet/raylet; do
    strip --strip-unneeded "$work/tree/ray/$binary"
done
# The wheel's RECORD lists the files removed: rewrite it for what is left (pip checks hashes of what it installs).
.venv/bin/python - "$work/tree" <<'PY'
import base64, hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
record = next(root.glob("ray-*.dist-info/RECORD"))
lines = []
for path in sorted(p for p in root.rglob("*") if p.is_file() and p != record):
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    lines.append(f"{path.relative_to(root).as_posix()},sha256={digest},{len(data)}")
lines.append(f"{record.relative_to(root).as_posix()},,")
record.write_text("\n".join(lines) + "\n")
PY
(cd "$work/tree" && zip -q -r -9 "$out/whl/$(basename "$wheel")" .)
for name in click jsonschema jsonschema-specifications referencing rpds-py attrs msgpack protobuf \
            requests urllib3 idna certifi charset-normalizer tensorboardX; do
    # the version .venv runs Ray with, where it has one
    pinned=$(.venv/bin/python -c "import importlib.metadata as m; print('==' + m.version('$name'))" 2>/dev/null || true)
    "${pip[@]}" -d "$out/whl" "$name$pinned" 2> >(grep -v "^WARNING" >&2)
done
cat > "$out/install.sh" <<'SH'
#!/usr/bin/env bash
# On the GPU machine, from the repository root: Ray and its requirements into .device-site/ (kept between calls).
set -e
target="${1:-.device-site}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
    "$(dirname "$0")"/whl/*.whl
echo "device: ray installed in $target ($(ls "$(dirname "$0")"/whl | wc -l) wheels)"
SH
du -sh "$out" | sed 's/^/ray carry folder: /'
