"""XLA:CPU's two matmul implementations, YNNPACK's (XLA's default) and its own (Eigen), side by side in one
process: the folded model's batched inference and batch-1 latency, then the train step, each compiled both
ways and timed in alternation (these VMs drift), then MobileNet 1.0-224's pointwise products alone:

  python tests/inference_matmuls.py [ALPHA-RESOLUTION-BATCH ...]     # default: 1-224-32 0.25-36-64 1-63-64

Measured and not adopted: neither is ahead across sizes (BENCHMARKS.md, session 13).
"""

import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]

from mnet_jax import runtime  # noqa: E402

runtime.retain_freed_memory()  # as main and the benchmark run: freed memory kept for the next call

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from mnet_jax import benchmark, folding  # noqa: E402
from mnet_jax.models import MobileNetV1  # noqa: E402

BACKENDS = {'ynnpack': {}, 'xla': {'xla_cpu_experimental_ynn_fusion_type': ''}}
POINTWISE = ((401408, 32, 64), (100352, 64, 128), (100352, 128, 128), (25088, 128, 256), (25088, 256, 256),
             (6272, 256, 512), (6272, 512, 512), (1568, 512, 1024), (1568, 1024, 1024))


def median_ms(fn, *args, calls: int, repeats: int = 3) -> float:
  """Median ms per call over `repeats` runs of `calls`, after the benchmark's warm-up."""
  call = lambda: jax.block_until_ready(fn(*args))  # noqa: E731
  benchmark.warm_up(call)
  return 1e3 * statistics.median(benchmark.time_calls(call, calls, repeats))


def compiled_both_ways(fn, *args) -> dict:
  lowered = jax.jit(fn).lower(*args)
  return {name: lowered.compile(compiler_options=options) for name, options in BACKENDS.items()}


def model_rows(alpha: float, resolution: int, batch: int, rounds: int = 3) -> None:
  model = MobileNetV1(alpha=alpha)
  key = jax.random.key(0)
  images = jax.random.normal(key, (batch, resolution, resolution, 3))
  labels = jax.random.randint(key, (batch,), 0, 1000)
  variables = jax.jit(lambda x: model.init(key, x))(images[:1])
  folded_model = folding.FoldedMobileNetV1.of(model)
  folded = folding.fold(variables, model.bn_epsilon)
  infer = lambda params, x: folded_model.apply({'params': params}, x)  # noqa: E731
  tx = optax.sgd(0.01, momentum=0.9)
  state = [variables['params'], variables['batch_stats'], tx.init(variables['params'])]
  batched, single = compiled_both_ways(infer, folded, images), compiled_both_ways(infer, folded, images[:1])
  train = compiled_both_ways(benchmark.sgd_train_step(model, tx, key), *state, images, labels)  # not donated
  one = images[:1]
  calls = max(1, int(2e9 / (batch * resolution ** 2 * 3 * 4e3 * alpha ** 2)))  # ~0.1-0.3 s per repeat
  for round_ in range(rounds):
    for name in BACKENDS:
      print(f'{alpha}-{resolution}, batch {batch}, round {round_ + 1}, {name:8s} matmuls: inference '
            f'{median_ms(batched[name], folded, images, calls=calls):7.2f} ms, batch-1 '
            f'{median_ms(single[name], folded, one, calls=20):6.2f} ms, train step '
            f'{median_ms(train[name], *state, images, labels, calls=calls):7.1f} ms', flush=True)


def pointwise_rows() -> None:
  key = jax.random.key(0)
  products = {'forward': lambda x, w: jnp.clip(x @ w + 1.0, 0.0, 6.0), 'input grad': lambda g, w: g @ w.T,
              'kernel grad': lambda x, g: x.T @ g}
  for m, k, n in POINTWISE:
    x, w, g = (jax.random.normal(key, shape) for shape in ((m, k), (k, n), (m, n)))
    operands = {'forward': (x, w), 'input grad': (g, w), 'kernel grad': (x, g)}
    cells = []
    for name, fn in products.items():
      compiled = compiled_both_ways(fn, *operands[name])
      rates = {b: 2 * m * k * n / median_ms(compiled[b], *operands[name], calls=5) / 1e6 for b in BACKENDS}
      cells.append(f'{name} ' + ' / '.join(f'{rates[b]:4.0f}' for b in BACKENDS))
    print(f'{m}x{k}x{n} GFLOP/s (ynnpack / xla): ' + ', '.join(cells), flush=True)


if __name__ == '__main__':
  for spec in sys.argv[1:] or ['1-224-32', '0.25-36-64', '1-63-64']:
    alpha, resolution, batch = spec.split('-')
    model_rows(float(alpha), int(resolution), int(batch))
  pointwise_rows()
