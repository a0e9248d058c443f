#!/usr/bin/env bash
# The GPU-box check, in under 10 minutes on one GPU: which GPU and versions, the benchmark at 1.0-224 in bfloat16
# against PyTorch (eager and torch.compile), and the tests that exercise the model's GPU paths (grouped depthwise
# convolution, the fused BatchNorm), then one summary. Needs what README.md's "A GPU box" installs, plus torch for
# the peer; TensorFlow is not needed (no input pipeline is timed).
#
#   bash launch/gpu_check.sh [OUT_DIR]     # OUT_DIR (default gpu_check/) keeps the JSON rows and the logs
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

python3 - > "$out/device.txt" <<'PY' || { cat "$out/device.txt"; exit 2; }
import importlib.metadata as metadata
import sys

import jax

gpus = [d for d in jax.devices() if d.platform == 'gpu']
if not gpus:
  print('error: JAX sees no GPU; install jax[cuda12] as README.md "A GPU box" says')
  sys.exit(2)
versions = []
for package in ('jax', 'jaxlib', 'flax', 'optax', 'torch'):
  try:
    versions.append(f'{package} {metadata.version(package)}')
  except metadata.PackageNotFoundError:
    versions.append(f'{package} missing')
print(f'{len(gpus)} x {gpus[0].device_kind}; {", ".join(versions)}')
PY

timeout 420 python3 -m mnet_jax.benchmark --batch 128 --steps 10 --repeats 3 --dtype bfloat16 --no_pipeline \
  --peers pytorch --json "$out/benchmark_bf16_224.json" > "$out/benchmark.txt" 2>&1
benchmark=$?
timeout 150 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_layers.py tests/test_batch_norm.py \
  > "$out/tests.txt" 2>&1
tests=$?

echo "== GPU check ($(date -u +%F), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
cat "$out/device.txt"
echo "-- benchmark, 1.0-224, batch 128, bfloat16 (exit $benchmark; rows in $out/benchmark_bf16_224.json)"
grep -E '^\| *(mnet_jax|pytorch)|x best' "$out/benchmark.txt" || tail -5 "$out/benchmark.txt"
echo "-- tests (exit $tests)"
tail -1 "$out/tests.txt"
[ "$benchmark" -eq 0 ] && [ "$tests" -eq 0 ]
