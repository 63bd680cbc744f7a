#!/usr/bin/env bash
# On a GPU machine, from the repository root: the GPU test suite and the GPU benchmark, in that order.
#   bash scripts/gpu_suite.sh [tests|gate|bench|ray|all] [OUT]  (default: all, OUT=build/gpu)
# tests: pytest -m gpu (kernels at full size, the engine's paths against the float32 reference, CUDA graphs,
#        the DeepSpeed step; about 3 minutes on one H100 or H200)
# gate:  benchmarks/gpu.py --gate-only (the kernel checks at the emola-7b shape, every engine teacher-forced)
# bench: benchmarks/gpu.py (the gate, then every timing): its raw JSON in OUT/runs/, to be added to
#        benchmarks/results/gpu/runs/ (then: python benchmarks/gpu_summary.py)
# ray:   benchmarks/gpu_ray_train.py (Ray Train, one GPU worker, emola-7b shape: 20 steps, a worker killed after
#        the first checkpoint, the resume; needs Ray: scripts/device_ray.sh)
# Logs and the run's JSON go to OUT; EMOLA_COMMIT names the commit measured when the tree has no .git.
set -uo pipefail
part="${1:-all}"
out="${2:-build/gpu}"
mkdir -p "$out"
python="${PYTHON:-python3}"
status=0
if [ "$part" = tests ] || [ "$part" = all ]; then
    "$python" -m pytest -m gpu --noconftest -p no:cacheprovider -q -rA tests/gpu >"$out/pytest-gpu.log" 2>&1
    code=$?
    tail -25 "$out/pytest-gpu.log"
    [ $code -eq 0 ] || status=$code
fi
if [ "$part" = gate ]; then
    "$python" benchmarks/gpu.py --gate-only --out "$out/gate.json" 2>&1 | tee "$out/gate.log" | grep -E "^(pass|FAIL|GATE|gate|#|wrote)"
    code=${PIPESTATUS[0]}
    [ $code -eq 0 ] || status=$code
fi
if [ "$part" = bench ] || [ "$part" = all ]; then
    "$python" benchmarks/gpu.py --no-baseline --runs-dir "$out/runs" ${EMOLA_GPU_ARGS:-} >"$out/gpu.log" 2>&1
    code=$?
    grep -E "^(FAIL|GATE|#)|\| |MFU|wrote" "$out/gpu.log" | tail -60
    [ $code -eq 0 ] || status=$code
fi
if [ "$part" = ray ]; then
    "$python" benchmarks/gpu_ray_train.py --out "$out/ray_train.json" >"$out/ray_train.log" 2>&1
    code=$?
    grep -E "^(#|killed|Traceback)|Error" "$out/ray_train.log" | tail -20
    [ $code -eq 0 ] || status=$code
fi
exit $status
