"""The limits a benchmarked step is bound by, so that its distance to them is a number.

The machine's limits are measured with XLA in the benchmark's own run (these VMs drift by ~25%):
the best matrix-product rate over a few products shaped like MobileNet's pointwise layers, and the
stream bandwidth of a large element-wise pass. A step's matmul FLOPs come from the layer table
(`cost.py`); the bytes it moves from XLA's cost analysis of the compiled step. The floor is the
larger of the two times.
"""

from __future__ import annotations

import time
from typing import Any

from mnet_jax import cost

# (M, K, N) of the products timed: a pointwise layer is (batch * pixels, C_in) x (C_in, C_out).
DOT_SHAPES = ((8192, 256, 256), (4096, 512, 512), (2048, 1024, 1024))
STREAM_BYTES = 1 << 28  # 256 MiB arrays: far beyond every cache


def measure_limits(dtype: str = 'float32', repeats: int = 5) -> dict[str, Any]:
  """{'dot_gflop_s', 'stream_gb_s'}: the best matmul rate and element-wise bandwidth on JAX's default device."""
  import jax
  import jax.numpy as jnp

  def best_seconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      seconds.append(time.perf_counter() - start)
    return min(seconds)

  dot = jax.jit(jnp.dot)
  rates = []
  for m, k, n in DOT_SHAPES:
    a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
    rates.append(2 * m * k * n / best_seconds(dot, a, b) / 1e9)
  x = jnp.ones((STREAM_BYTES // jnp.dtype(dtype).itemsize,), dtype)
  stream = 2 * STREAM_BYTES / best_seconds(jax.jit(lambda v: v * 2 + 1), x) / 1e9  # one read, one write
  return {'dot_gflop_s': max(rates), 'stream_gb_s': stream, 'dtype': dtype}


def matmul_flops(alpha: float, resolution: int, batch: int, train: bool) -> float:
  """FLOPs of a step's matrix products: every convolution but the depthwise ones (element-wise work), and the
  classifier; 2 per Mult-Add. Training adds two products per layer (input and kernel gradients), less the
  stem's input gradient, which nothing needs."""
  layers = cost.model_cost(alpha, resolution).layers
  forward = sum(c.mult_adds for c in layers if c.layer.kind != 'depthwise')
  if not train:
    return 2.0 * batch * forward
  return 2.0 * batch * (3 * forward - layers[0].mult_adds)


def compiled_bytes(compiled: Any) -> float | None:
  """Bytes a compiled XLA program reads and writes, per XLA's cost analysis (None where it gives none)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  value = (analysis or {}).get('bytes accessed')
  return float(value) if value else None


def floor(flops: float, bytes_moved: float | None, limits: dict[str, Any]) -> dict[str, Any]:
  """The step's floor in ms: its matmuls at the best dot rate, or its bytes at the stream bandwidth."""
  matmul_ms = flops / limits['dot_gflop_s'] / 1e6
  memory_ms = bytes_moved / limits['stream_gb_s'] / 1e6 if bytes_moved else 0.0
  return {'gflop': flops / 1e9, 'gb': (bytes_moved or 0.0) / 1e9, 'matmul_ms': matmul_ms, 'memory_ms': memory_ms,
          'floor_ms': max(matmul_ms, memory_ms), 'bound': 'matmuls' if matmul_ms >= memory_ms else 'memory'}


def format_floor(name: str, limit: dict[str, Any], step_ms: dict[str, float]) -> str:
  """'train step: matmuls 12.3 GFLOP = 130 ms, memory 4.10 GB = 418 ms; floor 418 ms (memory); mnet_jax 600 ms
  = 1.44x it, ...' for the frameworks' step times in `step_ms`."""
  times = ', '.join(f'{who} {ms:.3g} ms = {ms / limit["floor_ms"]:.2f}x' for who, ms in step_ms.items())
  return (f'{name}: matmuls {limit["gflop"]:.3g} GFLOP = {limit["matmul_ms"]:.3g} ms, memory {limit["gb"]:.3g} GB '
          f'= {limit["memory_ms"]:.3g} ms; floor {limit["floor_ms"]:.3g} ms ({limit["bound"]}); {times}')
