"""A study point's speed probes, measured once after its runs and kept beside them.

`<point>/latency.json`: XLA's batch-1 latency and batch throughput on this machine.
`<point>/tflite.json`: the LiteRT (TFLite) interpreter's latency of the float32 and int8
flatbuffers; with it, each run's int8 top-1 in `<run>/int8.json`. Speed does not depend on
the weights' values, so the latency probes use constant weights of the right shapes.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from mnet_jax import architecture, input_pipeline, report, train, warm_start
from mnet_jax.fileio import atomic_write_json, read_json

TFLITE_SECONDS = 0.5  # per thread count: the interpreter's latency is steady, hundreds of calls even at 1.0-63


def _constant_variables(model: Any, resolution: int) -> Any:
  """Variables of `model`'s shapes, all 0.01, made on the host (the initializer ran eagerly for 16 s at 1.0-63)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, resolution, resolution, 3),
                                                                              jnp.float32))
  return jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)


def measure_inference(run: ml_collections.ConfigDict, batch_size: int, min_seconds: float = 1.0,
                      min_repeats: int = 20) -> dict[str, Any]:
  """Batch-1 latency (median and interquartile range over >= `min_repeats` calls and >= `min_seconds`)
  and batch-`batch_size` throughput of the run config's model on this machine's first device, after warm-up."""
  probe_start = time.perf_counter()
  model = train.create_model(run.model, input_pipeline.dataset_info(run.data).num_classes)
  resolution = run.model.resolution
  variables = jax.device_put(_constant_variables(model, resolution))  # put once: compiles nothing
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def timings(batch: int, seconds: float, repeats: int) -> np.ndarray:
    images = jax.device_put(np.zeros((batch, resolution, resolution, 3), np.float32))
    for _ in range(3):  # compile, then let allocators and caches settle
      forward(variables, images).block_until_ready()
    times, begin = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - begin < seconds:
      start = time.perf_counter()
      forward(variables, images).block_until_ready()
      times.append(time.perf_counter() - start)
    return np.asarray(times)

  latency = 1000 * timings(1, min_seconds, min_repeats)
  # Throughput is a column, not the figure's axis: batch calls are long and steady, a quarter of the budget does.
  throughput = batch_size / np.median(timings(batch_size, min_seconds / 4, max(3, min_repeats // 4)))
  return {'latency_ms': float(np.median(latency)), 'probe_s': time.perf_counter() - probe_start,
          'latency_ms_spread': [float(np.percentile(latency, 25)), float(np.percentile(latency, 75))],
          'infer_img_s': float(throughput), 'latency_repeats': int(latency.size)}


def measured_latency(run: ml_collections.ConfigDict, batch_size: int, point_dir: epath.Path) -> dict[str, Any] | None:
  """The point's XLA latency probe (`measure_inference`), measured once and kept in `<point_dir>/latency.json`;
  None when `batch_size` is 0 (the probe is off)."""
  if not batch_size:
    return None
  path = point_dir / 'latency.json'
  if path.exists():
    return read_json(path)
  try:
    timing = measure_inference(run, batch_size)
  finally:
    jax.clear_caches()
  if jax.process_index() == 0:
    atomic_write_json(path, timing)
  return timing


def _tflite_probe_needed(sweep: ml_collections.ConfigDict, measured: dict[str, Any]) -> tuple[bool, bool]:
  """(float, int8): which parts of the LiteRT probe the sweep asks for and `measured` still lacks."""
  want_float, want_int8 = sweep.get('tflite_latency', False), sweep.get('tflite_int8', False)
  return (want_float and report.TFLITE_FIELDS[0] not in measured,
          want_int8 and report.INT8_FIELDS[0] not in measured)


def measured_tflite(sweep: ml_collections.ConfigDict, run: ml_collections.ConfigDict, point_dir: epath.Path,
                    run_dirs: list[epath.Path]) -> dict[str, Any] | None:
  """The point's LiteRT (TFLite) probe, measured once and kept in `<point_dir>/tflite.json`.

  `sweep.tflite_latency`: single-image latency of the float32 flatbuffer in the interpreter with XNNPACK at 1
  and 2 threads, with constant weights as the XLA probe. `sweep.tflite_int8`: the int8 flatbuffer of each of
  the point's finished `run_dirs` (`export`, calibrated on training images), its top-1 on the eval split into
  the run dir's `int8.json`, and the first one's int8 latency. A probe that fails is logged and left for the
  next run of the sweep: the study's table does not depend on it.
  """
  from mnet_jax import export  # TensorFlow's converter and LiteRT: only where the axis is on

  path = point_dir / 'tflite.json'
  measured = read_json(path) if path.exists() else {}
  want_float, want_int8 = _tflite_probe_needed(sweep, measured)
  if not (want_float or want_int8):
    return measured or None
  model_config, resolution = run.model, run.model.resolution
  fields = {'alpha': model_config.alpha, 'depth': model_config.get('depth', 1.0), 'variant': model_config.variant,
            'min_depth': model_config.min_depth, 'activation': model_config.activation,
            'bn_epsilon': model_config.bn_epsilon,
            'num_classes': input_pipeline.dataset_info(run.data).num_classes}
  start = time.perf_counter()
  try:
    if want_float:
      constant = _constant_variables(train.create_model(model_config, fields['num_classes']),
                                     architecture.MIN_RESOLUTION)
      measured.update(_latencies('tflite', export.Converted(fields, constant, resolution).tflite()))
    if want_int8:
      int8_latency, images = None, None
      for directory in run_dirs:
        weights = warm_start.load(str(directory))
        images = images or export.calibration_images(run.data, resolution, export.CALIBRATION_IMAGES)
        content = export.Converted(fields, {'params': weights.params, 'batch_stats': weights.batch_stats},
                                   resolution).tflite_int8(images)
        accuracy = export.tflite_accuracy(content, run.data, resolution)
        if jax.process_index() == 0:
          atomic_write_json(directory / 'int8.json', {'top1_int8': accuracy['top1'], 'top5_int8': accuracy['top5'],
                                                      'eval_examples': accuracy['eval_examples']})
        int8_latency = int8_latency or _latencies('int8', content)
      measured.update(int8_latency or {})
  except Exception as e:  # noqa: BLE001 - a missing runtime or a converter failure must not sink the table
    train.log(f'[sweep] {point_dir.name}: LiteRT probe failed ({type(e).__name__}: '
              f'{str(e).splitlines()[0][:200]}); rerun the sweep to retry it')
    return measured or None
  finally:
    jax.clear_caches()
  measured['tflite_probe_s'] = measured.get('tflite_probe_s', 0.0) + time.perf_counter() - start
  times = ', '.join(f'{kind} {measured[f"{kind}_1t_latency_ms"]:.3g} / {measured[f"{kind}_2t_latency_ms"]:.3g} ms'
                    for kind in ('tflite', 'int8') if f'{kind}_1t_latency_ms' in measured)
  train.log(f'[sweep] {point_dir.name}: LiteRT at 1 / 2 threads: {times} (probe {time.perf_counter() - start:.1f} s)')
  if jax.process_index() == 0:
    atomic_write_json(path, measured)
  return measured


def _latencies(prefix: str, content: bytes) -> dict[str, Any]:
  """`<prefix>_<n>t_latency_ms` and its spread at each thread count of `export.THREADS`."""
  from mnet_jax import export

  timings = {}
  for threads in export.THREADS:
    timing = export.measure_latency(content, threads, min_seconds=TFLITE_SECONDS)
    timings[f'{prefix}_{threads}t_latency_ms'] = timing['latency_ms']
    timings[f'{prefix}_{threads}t_latency_ms_spread'] = timing['latency_ms_spread']
  return timings
