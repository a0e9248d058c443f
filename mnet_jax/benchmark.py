"""Throughput benchmark of mnet_jax against its peers, side by side in one invocation.

    python -m mnet_jax.benchmark --alpha 1 --resolution 224 --batch 32 --peers keras,pytorch
    python -m mnet_jax.benchmark --preset study --rounds 3   # the offline study's largest and smallest models

Measures on the current backend: a real optax train step (forward + backward + update, BN
in train mode), eval throughput at the batch, latency at batch 1, compile time separately,
and the input pipeline alone. Under each table, the floors the steps are bound by
(`roofline.py`: matmul FLOPs at the best dot rate, bytes at the stream bandwidth, both
measured in the same run). Each framework runs in its own subprocess (its own thread
pools and memory), one after another; warm-up is excluded, figures are medians of the
repeats and the spread (min-max) is shown. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mnet_jax import architecture, cli, peers, roofline, runtime
from mnet_jax.layers import DEPTHWISE_IMPLS

PEERS = ('keras', 'pytorch')
# (alpha, resolution) at batch 64: the default offline study's largest and smallest models and its batch.
PRESETS = {'study': ((1.0, 63), (0.25, 36))}
PRESET_BATCH = {'study': 64}
DTYPES = ('float32', 'bfloat16')
# Untimed calls of each function first: allocators, caches and thread pools settle over the
# first few steps (measured: step 1 at ~60 % of the steady rate, steps 2-3 within 5-10 %).
WARMUP_CALLS = 3
METRICS = (('train_img_s', 'train img/s', True), ('infer_img_s', 'infer img/s', True),
           ('latency_ms', 'batch-1 ms', False), ('compile_s', 'compile s', False))
SPREADS = {'train_img_s': 'train_spread', 'infer_img_s': 'infer_spread', 'latency_ms': 'latency_spread'}  # [min, max]


def log(message: str) -> None:
  print(f'[benchmark] {message}', file=sys.stderr, flush=True)


def time_calls(fn: Callable[[], None], calls: int, repeats: int) -> list[float]:
  """Seconds per call for each repeat of `calls` back-to-back calls (warm-up done by caller)."""
  result = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    result.append((time.perf_counter() - start) / calls)
  return result


def warm_up(*fns: Callable[[], None]) -> None:
  for fn in fns:
    for _ in range(WARMUP_CALLS):
      fn()


def summarize(work: peers.Workload, args: argparse.Namespace) -> dict[str, Any]:
  """Time a workload's three callables into one row of figures."""
  train = time_calls(work.train_step, args.steps, args.repeats)
  infer = time_calls(work.infer_batch, args.steps, args.repeats)
  single = time_calls(work.infer_single, max(args.steps, 10), args.repeats)
  rate = lambda seconds: sorted(args.batch / s for s in seconds)  # noqa: E731
  return {
      'train_img_s': statistics.median(rate(train)), 'train_spread': [min(rate(train)), max(rate(train))],
      'infer_img_s': statistics.median(rate(infer)), 'infer_spread': [min(rate(infer)), max(rate(infer))],
      'latency_ms': 1e3 * statistics.median(single), 'latency_spread': [1e3 * min(single), 1e3 * max(single)],
      'compile_s': work.compile_s, 'device': work.device,
  }


def sgd_train_step(model: Any, tx: Any, key: Any) -> Callable[..., tuple[Any, Any, Any]]:
  """The timed train step: (params, batch_stats, opt_state, images, labels) -> the three updated, with
  softmax cross-entropy, BatchNorm in train mode and `tx` (an optax transformation) applied."""
  import jax
  import optax

  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                                    mutable=['batch_stats'], rngs={'dropout': key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates['batch_stats']
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  return step


def jax_workload(args: argparse.Namespace) -> peers.Workload:
  """mnet_jax's MobileNetV1 with an optax SGD step; compilation timed apart from running."""
  import jax
  import jax.numpy as jnp
  import optax

  from mnet_jax import folding
  from mnet_jax.models import MobileNetV1

  model = MobileNetV1(alpha=args.alpha, dtype=jnp.dtype(args.dtype), depthwise_impl=args.depthwise_impl)
  key = jax.random.PRNGKey(0)
  images = jax.random.normal(key, (args.batch, args.resolution, args.resolution, 3))
  labels = jax.random.randint(key, (args.batch,), 0, 1000)
  variables = jax.jit(lambda x: model.init(key, x))(images[:1])
  tx = optax.sgd(0.01, momentum=0.9)
  # The train step donates its state, so it gets its own copy of the variables.
  state = jax.tree.map(jnp.copy, [variables['params'], variables['batch_stats'], tx.init(variables['params'])])

  step = sgd_train_step(model, tx, key)
  # Inference as deployed: the BatchNorms folded into the convolutions once, before any image (folding.py).
  folded_model = folding.FoldedMobileNetV1.of(model)
  infer = lambda folded, x: folded_model.apply({'params': folded}, x)  # noqa: E731
  start = time.perf_counter()
  train_fn = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, images, labels).compile()
  folded = jax.jit(folding.fold, static_argnums=1)(variables, model.bn_epsilon)
  infer_fn = jax.jit(infer).lower(folded, images).compile()
  single = images[:1]  # sliced once, as the peers do: an eager slice per call costs ~0.4 ms here
  single_fn = jax.jit(infer).lower(folded, single).compile()
  compile_s = time.perf_counter() - start

  def train():
    state[:] = train_fn(*state, images, labels)
    jax.block_until_ready(state)

  run_infer = lambda: jax.block_until_ready(infer_fn(folded, images))  # noqa: E731
  run_single = lambda: jax.block_until_ready(single_fn(folded, single))  # noqa: E731
  warm_up(train, run_infer, run_single)
  device = jax.devices()[0]
  return peers.Workload(train, run_infer, run_single, compile_s,
                        f'jax {jax.__version__} {device.platform} {device.device_kind}',
                        {'train': roofline.compiled_bytes(train_fn), 'infer': roofline.compiled_bytes(infer_fn)})


def input_pipeline_rate(args: argparse.Namespace, resolution: int) -> dict[str, Any]:
  """Images/s of `mnet_jax.input_pipeline.train_batches` alone, or a note why it was skipped."""
  if importlib.util.find_spec('mnet_jax.input_pipeline') is None:
    return {'note': 'skipped: mnet_jax.input_pipeline does not exist yet'}
  if importlib.util.find_spec('tensorflow') is None:
    return {'note': 'skipped: tensorflow is not installed'}
  try:
    from mnet_jax import input_pipeline
    config_path = pathlib.Path(__file__).resolve().parent.parent / 'experiments' / 'default.py'
    spec = importlib.util.spec_from_file_location('benchmark_default_config', config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.get_config().data
    if not data.data_dir:  # keep a prepared embedded dataset out of the working directory
      data.data_dir = str(pathlib.Path(tempfile.gettempdir()) / 'mnet_jax_benchmark_tfds')
    batches = iter(input_pipeline.train_batches(data, global_batch_size=args.batch, resolution=resolution,
                                                seed=0, start_step=0))
    for _ in range(3):  # warm-up: builds/caches the dataset, fills the prefetch buffer
      next(batches)
    calls = max(args.steps * 4, 20)
    seconds = time_calls(lambda: next(batches), calls, args.repeats)
  except Exception as e:  # the pipeline is another module's; report, do not crash the benchmark
    import traceback
    traceback.print_exc()
    return {'note': f'skipped: input pipeline failed: {type(e).__name__}: {e}'.splitlines()[0]}
  rates = sorted(args.batch / s for s in seconds)
  return {'img_s': statistics.median(rates), 'spread': [rates[0], rates[-1]], 'dataset': data.name,
          'resolution': resolution}


def worker(args: argparse.Namespace) -> dict[str, Any]:
  """Run one framework's measurement in this process (the subprocess side)."""
  name, _, variant = args.worker.partition(':')
  if name == 'limits':
    return roofline.measure_limits(args.dtype)
  if name == 'mnet_jax':
    work = jax_workload(args)
    row = summarize(work, args)
    row['variant'] = f'{args.dtype}, depthwise={args.depthwise_impl}'
    row['bytes_moved'] = work.bytes_moved
    return row
  if name == 'keras':
    work = peers.keras_workload(args.alpha, args.resolution, args.batch)
  else:
    work = peers.torch_workload(args.alpha, args.resolution, args.batch, variant)
  warm_up(work.train_step, work.infer_batch, work.infer_single)
  row = summarize(work, args)
  row['variant'] = 'float32' if name == 'keras' else variant
  return row


def run_isolated(spec: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
  """Run `worker` for spec in a fresh interpreter; a missing framework becomes a note."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'row.json'
    cmd = [sys.executable, '-m', 'mnet_jax.benchmark', *argv, '--worker', spec, '--worker_out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.exists():
      return json.loads(out.read_text())
    tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ['no output']
    return {'note': f'failed (exit {proc.returncode}): {tail[0][:200]}'}


def worker_specs(args: argparse.Namespace, has_cuda: bool) -> list[str]:
  specs = ['mnet_jax']
  if 'keras' in args.peers:
    specs.append('keras')
  if 'pytorch' in args.peers:
    variants = peers.TORCH_VARIANTS if has_cuda else peers.TORCH_VARIANTS[:2]
    specs += [f'pytorch:{v}' for v in variants]
  return specs


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
  """One row from a framework's rows of several rounds: the median of the round medians, the
  widest spread, and the first note if any round failed."""
  measured = [row for row in rounds if 'note' not in row]
  if not measured:
    return rounds[0]
  merged = dict(measured[0])
  for key, _, _ in METRICS:
    merged[key] = statistics.median(row[key] for row in measured)
    spread_key = SPREADS.get(key)
    if spread_key in merged:
      merged[spread_key] = [min(row[spread_key][0] for row in measured), max(row[spread_key][1] for row in measured)]
  merged['rounds'] = len(measured)
  return merged


def best_limits(rounds: list[dict[str, Any]]) -> dict[str, Any]:
  """The machine's limits over the rounds: the best measured (a limit is what the machine can do)."""
  measured = [row for row in rounds if 'note' not in row]
  if not measured:
    return rounds[0]
  return {**measured[0], 'dot_gflop_s': max(r['dot_gflop_s'] for r in measured),
          'stream_gb_s': max(r['stream_gb_s'] for r in measured)}


def step_floors(rows: list[dict[str, Any]], limits: dict[str, Any], alpha: float, resolution: int,
                batch: int) -> dict[str, Any]:
  """The train step's and the inference batch's floors, each framework's step time against them, as text lines."""
  jax_row = next((r for r in rows if r['framework'] == 'mnet_jax' and 'note' not in r), None)
  if 'note' in limits or jax_row is None:
    return {'note': f'floors: not measured ({limits.get("note", "mnet_jax failed")})'}
  result = {'lines': [f'floors (measured in this run: best dot {limits["dot_gflop_s"]:.4g} GFLOP/s, stream '
                      f'{limits["stream_gb_s"]:.3g} GB/s; bytes: XLA\'s count for the mnet_jax step):']}
  for name, key, train in (('train step', 'train_img_s', True), ('inference batch', 'infer_img_s', False)):
    limit = roofline.floor(roofline.matmul_flops(alpha, resolution, batch, train),
                           jax_row.get('bytes_moved', {}).get('train' if train else 'infer'), limits)
    step_ms = {f'{r["framework"]} {r["variant"]}'.strip(): 1e3 * batch / r[key] for r in rows if 'note' not in r}
    result['train' if train else 'infer'] = {**limit, 'step_ms': step_ms}
    result['lines'].append('  ' + roofline.format_floor(name, limit, step_ms))
  return result


def format_table(rows: list[dict[str, Any]]) -> str:
  """Each figure with its ratio to the fastest peer (>1 = mnet_jax-style better: faster/shorter)."""
  best = {}
  for key, _, higher in METRICS:
    values = [r[key] for r in rows if r['framework'] != 'mnet_jax' and key in r]
    if values:
      best[key] = max(values) if higher else min(values)
  lines = ['| framework | variant | ' + ' | '.join(f'{label} (x best peer)' for _, label, _ in METRICS) + ' |',
           '|---|---|' + '---|' * len(METRICS)]
  for row in rows:
    if 'note' in row:
      lines.append(f"| {row['framework']} | {row.get('variant', '')} | {row['note']} |" + ' |' * (len(METRICS) - 1))
      continue
    cells = []
    for key, _, higher in METRICS:
      ratio = ''
      if key in best and row[key] > 0:
        ratio = f' ({(row[key] / best[key]) if higher else (best[key] / row[key]):.2f}x)'
      spread = row.get(SPREADS.get(key))
      spread_text = f' [{spread[0]:.3g}-{spread[1]:.3g}]' if spread else ''
      cells.append(f'{row[key]:.3g}{spread_text}{ratio}')
    lines.append(f"| {row['framework']} | {row['variant']} | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m mnet_jax.benchmark', description=__doc__.splitlines()[0])
  parser.add_argument('--alpha', type=float, default=1.0)
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--batch', type=int, default=None, help='default 32; 64 with --preset study')
  parser.add_argument('--preset', default='', help='"study": the offline study\'s alpha 1 at 63 px and alpha 0.25 at '
                      '36 px, batch 64, instead of --alpha/--resolution')
  parser.add_argument('--steps', type=int, default=3, help='timed calls per repeat')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=1,
                      help='measure every framework this many times, interleaved (A, B, C, A, B, C, ...), and report '
                           'the median of the rounds: robust to a machine whose speed drifts over minutes')
  parser.add_argument('--dtype', default='float32', help=f'mnet_jax compute dtype: {", ".join(DTYPES)}')
  parser.add_argument('--depthwise_impl', default='auto', help=f'one of {", ".join(DEPTHWISE_IMPLS)}')
  parser.add_argument('--peers', default='keras,pytorch', help='comma list of keras,pytorch; "none" for none')
  parser.add_argument('--no_pipeline', action='store_true', help='skip the input-pipeline measurement')
  parser.add_argument('--system_malloc', action='store_true',
                      help="run every framework with glibc's default malloc instead of mnet_jax's (see runtime.py)")
  parser.add_argument('--json', default='', help='write the rows to this path')
  parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
  parser.add_argument('--worker_out', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.batch is None:
    args.batch = PRESET_BATCH.get(args.preset, 32)
  try:
    if args.preset and args.preset not in PRESETS:
      raise ValueError(f'unknown --preset {args.preset!r}; expected {", ".join(PRESETS)}')
    architecture.check_alpha(args.alpha)
    architecture.check_resolution(args.resolution)
    if min(args.batch, args.steps, args.repeats, args.rounds) < 1:
      raise ValueError('--batch, --steps, --repeats and --rounds must be positive')
    if args.dtype not in DTYPES:
      raise ValueError(f'--dtype must be one of {", ".join(DTYPES)}, got {args.dtype!r}')
    if args.depthwise_impl not in DEPTHWISE_IMPLS:
      raise ValueError(f'--depthwise_impl must be one of {", ".join(DEPTHWISE_IMPLS)}, got {args.depthwise_impl!r}')
    args.peers = [] if args.peers in ('', 'none') else args.peers.split(',')
    unknown = set(args.peers) - set(PEERS)
    if unknown:
      raise ValueError(f'unknown peer(s) {", ".join(sorted(unknown))}; expected {", ".join(PEERS)}')
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  return args


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.worker:
    try:
      row = worker(args)
    except peers.PeerUnavailable as e:
      row = {'note': f'skipped: {e}'}
    pathlib.Path(args.worker_out).write_text(json.dumps(row))
    return
  has_cuda = False
  if 'pytorch' in args.peers and importlib.util.find_spec('torch') is not None:
    import torch
    has_cuda = torch.cuda.is_available()
  # Every framework runs under the allocator settings `python -m mnet_jax.main` uses: same
  # conditions for all, and the figures are what a training run gets.
  retained = None if args.system_malloc else runtime.retaining_memory_env()
  env = retained or dict(os.environ)
  specs = worker_specs(args, has_cuda)
  configs = PRESETS.get(args.preset, ((args.alpha, args.resolution),))
  results = []
  for alpha, resolution in configs:
    passthrough = [f'--alpha={alpha}', f'--resolution={resolution}']
    passthrough += [f'--{k}={getattr(args, k)}' for k in ('batch', 'steps', 'repeats', 'dtype', 'depthwise_impl')]
    measured: dict[str, list[dict[str, Any]]] = {spec: [] for spec in ['limits', *specs]}
    for round_index in range(args.rounds):
      for spec in measured:
        log(f'measuring {spec} (alpha={alpha}, {resolution}px, batch {args.batch}), '
            f'round {round_index + 1}/{args.rounds} ...')
        measured[spec].append(run_isolated(spec, passthrough, env))
        log(json.dumps(measured[spec][-1]))
    rows = []
    for spec in specs:
      row = merge_rounds(measured[spec])
      framework, _, variant = spec.partition(':')
      rows.append({'framework': framework, 'variant': row.pop('variant', variant or args.dtype), **row})
    limits = best_limits(measured['limits'])
    floors = step_floors(rows, limits, alpha, resolution, args.batch)
    results.append({'alpha': alpha, 'resolution': resolution, 'batch': args.batch, 'rows': rows, 'limits': limits,
                    'floors': floors})
    print(f'\nMobileNet {alpha:g}-{resolution}, batch {args.batch}:')
    print(format_table(rows))
    for line in floors.get('lines', [floors.get('note', '')]):
      print(line)
  pipeline = {'note': 'skipped: --no_pipeline'} if args.no_pipeline else None
  if pipeline is None:
    log('measuring the input pipeline ...')
    pipeline = input_pipeline_rate(args, max(resolution for _, resolution in configs))
  machine = {'platform': platform.platform(), 'processor': platform.processor(), 'cpus': os.cpu_count(),
             'python': platform.python_version(), 'load_avg_1min': os.getloadavg()[0]}
  config = {k: getattr(args, k) for k in ('preset', 'batch', 'steps', 'repeats', 'rounds', 'dtype',
                                         'depthwise_impl', 'peers')}
  config['glibc_tunables'] = env.get('GLIBC_TUNABLES', '')
  print(f'input pipeline alone: {pipeline}')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {'results': results, 'input_pipeline': pipeline, 'machine': machine, 'config': config}, indent=1))


if __name__ == '__main__':
  cli.exit_without_collecting()  # each framework's worker process exits ~2 s sooner
  main()
