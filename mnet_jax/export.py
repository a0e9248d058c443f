"""Export a trained or imported MobileNet for deployment: TF SavedModel, LiteRT (TFLite) float32 and int8.

    python -m mnet_jax.export --workdir=runs/one                       # OUT = runs/one/export
    python -m mnet_jax.export --workdir=runs/one --formats=saved_model,tflite,int8 --out=deploy/one
    python -m mnet_jax.export --workdir=weights/slim_1.0_224 --resolution=224 --data_from=runs/eval_slim

The source is a run dir (its newest checkpoint, EMA weights where the run kept them) or a directory from
`mnet_jax.convert`; `warm_start.load` reads both. The BatchNorms are folded into the convolutions
(`folding.fold`): the exported graph is conv + bias + ReLU6 per layer.

The path maintained for jax 0.10 / TF 2.21 (checked 2026-12-01): `jax2tf.convert` serialises the JAX function
as StableHLO inside one `XlaCallModule` op (its TF-op mode, `enable_xla=False`, is gone: jax-ml/jax#31404 left
the flag deprecated and ignored), and TF 2.21's `tf.lite.TFLiteConverter` legalises that StableHLO to TFLite
builtins: LiteRT's "JAX models" guide (jax2tf, then SavedModel or concrete function, then TFLiteConverter). No
TF graph is written by hand, so the exported function is the folded Flax model itself. It is traced with XLA's
own convolutions (`depthwise_impl='grouped'`, 1x1 convolutions for the pointwise layers), which become one
CONV_2D per full or pointwise convolution and one DEPTHWISE_CONV_2D per depthwise one, each with its bias and
ReLU6 fused, a SUM for the pool and a FULLY_CONNECTED classifier: no Flex (TF) op. Padding is mnet_jax's 'SAME'
at every resolution, odd ones included (Keras' MobileNet pads stride-2 layers differently there; not used).

- OUT/saved_model  serving_default(images: float32[batch, R, R, 3] in [-1, 1]) -> {'logits'}; any batch;
                   StableHLO lowered for CPU, CUDA and TPU.
- OUT/model_float32.tflite, OUT/model_int8.tflite  batch 1 (a shape-polymorphic batch made the converter emit
                   ~200 shape ops and unfused activations). int8 is full-integer post-training quantisation
                   (per-channel weights, int8 input and output; their scale and zero point are in export.json),
                   calibrated on `--calibration_images` training images of the run's dataset.
- OUT/export.json  what was exported, the float exports' largest error against the unfolded Flax model on
                   random images, and float32 / int8 top-1 on the eval split when the data is at hand.

OUT is written into a temporary sibling and renamed when complete: never half written. The interpreter is
LiteRT's (`ai_edge_litert.interpreter`; `tf.lite.Interpreter` is deprecated in its favour), with its
default XNNPACK delegate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from mnet_jax import cli, folding
from mnet_jax.cli import one_line
from mnet_jax.fileio import check_output_directory, staged_directory

FORMATS = ('saved_model', 'tflite', 'int8')
DEFAULT_FORMATS = ('saved_model', 'tflite')
SAVED_MODEL, FLOAT_TFLITE, INT8_TFLITE, REPORT = 'saved_model', 'model_float32.tflite', 'model_int8.tflite', \
    'export.json'
THREADS = (1, 2)  # the interpreter thread counts the sweep's latency axis measures
CALIBRATION_IMAGES = 300  # int8: "a few hundred" training images
_MODEL_FIELDS = ('alpha', 'depth', 'num_classes', 'variant', 'min_depth', 'activation', 'bn_epsilon')
_EVAL_BATCH = 50


class ExportError(ValueError):
  """A source or output that cannot be exported; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A model to export: MobileNetV1 fields, its variables, the input size, and the data to calibrate and test on."""

  fields: dict[str, Any]  # MobileNetV1(**fields)
  variables: dict[str, Any]  # {'params', 'batch_stats'} of numpy arrays
  resolution: int
  data: Any | None  # a data ConfigDict (input_pipeline), or None
  path: str
  what: str  # e.g. 'weights at step 300'
  flax_top1: float | None = None  # the run's own top-1 (results.json), to compare with

  def model(self):
    from mnet_jax.models import MobileNetV1

    return MobileNetV1(**self.fields)


# --- Reading the source ------------------------------------------------------------------------

def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f'cannot read {path}: {one_line(e)}') from None


def load_source(path: str, resolution: int | None = None, data_from: str | None = None) -> Source:
  """A run dir or a converted checkpoint dir; `resolution` and `data_from` (a run dir whose config.json gives
  the dataset and resolution) override or complete what the source says."""
  import ml_collections

  from mnet_jax import convert, warm_start

  root = os.path.abspath(path)
  if not os.path.isdir(root):
    raise ExportError(f'{path}: no such directory')
  run_config, flax_top1 = None, None
  if os.path.exists(os.path.join(root, 'model.json')):
    fields = {k: v for k, v in convert.read_info(root).items() if k in _MODEL_FIELDS}
  elif os.path.exists(os.path.join(root, 'config.json')):
    run_config = _read_json(os.path.join(root, 'config.json'))
    checkpoints = os.path.join(root, 'checkpoints')
    if not (os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))):
      raise ExportError(f'{path}: a run dir without a checkpoint (checkpoints/ has none yet)')
    fields = {k: run_config['model'][k] for k in _MODEL_FIELDS if k in run_config['model']}
    results = os.path.join(root, 'results.json')
    if os.path.exists(results):
      flax_top1 = _read_json(results).get('top1')
  else:
    raise ExportError(f'{path}: neither a run dir (config.json and checkpoints/) nor a converted checkpoint '
                      '(model.json, from mnet_jax.convert)')
  try:
    weights = warm_start.load(root)
  except warm_start.InitFromError as e:
    raise ExportError(str(e).removeprefix('init_from ')) from None
  fields['num_classes'] = int(np.shape(weights.params['classifier']['bias'])[0])
  if data_from is not None:
    run_config = _read_json(os.path.join(os.path.abspath(data_from), 'config.json'))
    flax_top1 = None  # another model's
  if resolution is not None and run_config is not None and resolution != run_config['model']['resolution']:
    flax_top1 = None  # the run's top-1 is at its own resolution
  if resolution is None:
    if run_config is None:
      raise ExportError(f'{path}: a converted checkpoint has no input size: pass --resolution (or --data_from, '
                        'a run dir whose config gives it)')
    resolution = int(run_config['model']['resolution'])
  from mnet_jax import architecture

  try:
    architecture.check_resolution(resolution)
  except ValueError as e:
    raise ExportError(str(e)) from None
  data = ml_collections.ConfigDict(run_config['data']) if run_config else None
  return Source(fields, {'params': weights.params, 'batch_stats': weights.batch_stats}, resolution, data, path,
                weights.what, flax_top1)


# --- TensorFlow and LiteRT ---------------------------------------------------------------------

class Converted:
  """The folded model as a tf.Module (weights as variables), from which each format is written."""

  def __init__(self, fields: dict[str, Any], variables: dict[str, Any], resolution: int):
    import jax.numpy as jnp
    import tensorflow as tf
    from jax.experimental import jax2tf

    from mnet_jax.models import MobileNetV1

    model = MobileNetV1(**fields)
    # XLA's convolutions, which the converter maps to CONV_2D / DEPTHWISE_CONV_2D (the shifted CPU depthwise
    # would become nine slices and multiplies per layer), the pointwise ones too. float32 whatever the training
    # compute dtype was.
    folded_model = folding.FoldedMobileNetV1.of(model, depthwise_impl='grouped', pointwise_impl='conv',
                                                dtype=jnp.float32)
    folded = {name: {leaf: np.asarray(value, np.float32) for leaf, value in layer.items()}
              for name, layer in folding.fold(variables, model.bn_epsilon).items()}
    self.resolution = resolution
    self.module = tf.Module()
    self.module.params = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), folded)
    apply = lambda params, images: folded_model.apply({'params': params}, images)  # noqa: E731
    any_batch = jax2tf.convert(apply, with_gradient=False, polymorphic_shapes=[None, f'(b, {resolution}, '
                                                                                  f'{resolution}, 3)'],
                               native_serialization_platforms=('cpu', 'cuda', 'tpu'))
    batch_one = jax2tf.convert(apply, with_gradient=False, native_serialization_platforms=('cpu',))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec((None, resolution, resolution, 3), tf.float32,
                                                                 name='images')])
    def serve(images):
      return {'logits': any_batch(self.module.params, images)}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec((1, resolution, resolution, 3), tf.float32,
                                                                 name='images')])
    def serve_one(images):
      return {'logits': batch_one(self.module.params, images)}

    self.module.serve = serve
    self._serve_one = serve_one

  def save(self, directory: str) -> None:
    import tensorflow as tf

    tf.saved_model.save(self.module, directory, signatures={'serving_default': self.module.serve})

  def _converter(self):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_concrete_functions([self._serve_one.get_concrete_function()], self.module)

  def tflite(self) -> bytes:
    """The float32 flatbuffer."""
    return self._converter().convert()

  def tflite_int8(self, calibration: Iterable[np.ndarray]) -> bytes:
    """Full-integer int8 (int8 input and output), calibrated on `calibration`, single images in [-1, 1]."""
    import tensorflow as tf

    converter = self._converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # the input's statistics come from the calibration, as intended
      warnings.filterwarnings('ignore', message='Statistics for quantized inputs were expected')
      return converter.convert()


def interpreter(content: bytes, num_threads: int = 1, batch: int = 1):
  """A LiteRT interpreter with its default delegate (XNNPACK on CPU), tensors allocated for `batch` images."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    raise ExportError('the LiteRT interpreter is not installed (pip install -r requirements.txt: '
                      'ai-edge-litert)') from None
  runner = Interpreter(model_content=content, num_threads=num_threads)
  if batch != 1:
    runner.resize_tensor_input(runner.get_input_details()[0]['index'], [batch, *runner.get_input_details()[0]
                                                                       ['shape'][1:]])
  runner.allocate_tensors()
  return runner


def _quantization(details: dict[str, Any]) -> tuple[float, int] | None:
  scale, zero_point = details['quantization']
  return (float(scale), int(zero_point)) if details['dtype'] != np.float32 and scale else None


def run_tflite(runner: Any, images: np.ndarray) -> np.ndarray:
  """Logits (float32, dequantised for int8) of a batch of images in [-1, 1] the interpreter was allocated for."""
  inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
  values = np.asarray(images, np.float32)
  quantized = _quantization(inp)
  if quantized:
    scale, zero_point = quantized
    info = np.iinfo(inp['dtype'])
    values = np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(inp['dtype'])
  runner.set_tensor(inp['index'], values)
  runner.invoke()
  logits = runner.get_tensor(out['index'])
  quantized = _quantization(out)
  if quantized:
    scale, zero_point = quantized
    logits = (logits.astype(np.float32) - zero_point) * scale
  return np.asarray(logits, np.float32)


def measure_latency(content: bytes, num_threads: int, min_seconds: float = 1.0,
                    min_repeats: int = 20) -> dict[str, Any]:
  """Single-image latency (ms) in the interpreter: median and interquartile range over >= `min_repeats` calls and
  >= `min_seconds`, after warm-up (as `probes.measure_inference` times XLA)."""
  runner = interpreter(content, num_threads)
  inp = runner.get_input_details()[0]
  runner.set_tensor(inp['index'], np.zeros(inp['shape'], inp['dtype']))
  for _ in range(3):
    runner.invoke()
  times, begin = [], time.perf_counter()
  while len(times) < min_repeats or time.perf_counter() - begin < min_seconds:
    start = time.perf_counter()
    runner.invoke()
    times.append(time.perf_counter() - start)
  latency = 1000 * np.asarray(times)
  return {'latency_ms': float(np.median(latency)),
          'latency_ms_spread': [float(np.percentile(latency, 25)), float(np.percentile(latency, 75))],
          'repeats': int(latency.size)}


def _images(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  from mnet_jax import input_pipeline

  for batch in batches:
    images = batch['image']
    if images.dtype == np.uint8:  # read through a data source: scaled on the device in training
      images = input_pipeline.normalize(images.astype(np.float32))
    yield images, batch['label'], batch.get('mask', np.ones(len(images), np.float32))


def calibration_images(data: Any, resolution: int, count: int) -> list[np.ndarray]:
  """`count` training images of the run's pipeline (seed 0), single images in [-1, 1]."""
  from mnet_jax import input_pipeline

  batches = input_pipeline.train_batches(data, global_batch_size=min(count, 64), resolution=resolution, seed=0,
                                         process_index=0, process_count=1)
  images = []
  for batch, _, _ in _images(batches):
    images += list(batch)
    if len(images) >= count:
      break
  batches.close()
  return images[:count]


def tflite_accuracy(content: bytes, data: Any, resolution: int, num_threads: int = 2) -> dict[str, Any]:
  """Top-1 and top-5 (None with fewer than 5 classes) of a flatbuffer on the eval split."""
  from mnet_jax import input_pipeline

  runner = interpreter(content, num_threads, batch=_EVAL_BATCH)
  hits1 = hits5 = count = 0.0
  for images, labels, mask in _images(input_pipeline.eval_batches(
      data, global_batch_size=_EVAL_BATCH, resolution=resolution, process_index=0, process_count=1)):
    logits = run_tflite(runner, images)
    top = np.argsort(-logits, axis=-1)[:, :5]
    hits1 += float(np.sum((top[:, 0] == labels) * mask))
    hits5 += float(np.sum(np.any(top == labels[:, None], axis=-1) * mask))
    count += float(np.sum(mask))
  count = max(count, 1.0)
  return {'top1': hits1 / count, 'top5': hits5 / count if runner.get_output_details()[0]['shape'][-1] >= 5
          else None, 'eval_examples': int(count)}


def flax_error(source: Source, run: Callable[[np.ndarray], np.ndarray], count: int = 4, seed: int = 0
               ) -> dict[str, float]:
  """The largest |export - Flax| over `count` random images in [-1, 1], absolute and relative to the largest
  |Flax logit|, against the unfolded model (`MobileNetV1.apply(..., train=False)` in float32)."""
  import jax.numpy as jnp

  images = np.random.default_rng(seed).uniform(-1, 1, (count, source.resolution, source.resolution, 3))
  images = images.astype(np.float32)
  reference = np.asarray(source.model().clone(dtype=jnp.float32).apply(source.variables, images, train=False))
  got = run(images)
  error = float(np.max(np.abs(got - reference)))
  return {'max_abs_error': error, 'relative_error': error / max(float(np.max(np.abs(reference))), 1e-30)}


# --- The output directory ----------------------------------------------------------------------

def export(source: Source, out: str, formats: Iterable[str] = DEFAULT_FORMATS,
           calibration_count: int = CALIBRATION_IMAGES,
           evaluate: bool = True, overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Write the requested formats and export.json into `out` (all or nothing); returns export.json's content."""
  formats = tuple(dict.fromkeys(formats))
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ExportError(f'unknown format {unknown[0] if unknown else "(none)"!r}; expected some of {", ".join(FORMATS)}')
  if 'int8' in formats and source.data is None:
    raise ExportError('int8 needs calibration images: --data_from=RUN_DIR (its config.json names the dataset)')
  out = os.path.abspath(out)
  check_output_directory(out, overwrite, ExportError)
  report = {'source': source.path, 'weights': source.what, **source.fields, 'resolution': source.resolution,
            'input': 'float32 images [batch, R, R, 3] in [-1, 1]', 'formats': list(formats),
            'flax_top1': source.flax_top1}
  start = time.perf_counter()
  converted = Converted(source.fields, source.variables, source.resolution)
  with staged_directory(out, ExportError) as tmp:
    if 'saved_model' in formats:
      import tensorflow as tf

      converted.save(os.path.join(tmp, SAVED_MODEL))
      serving = tf.saved_model.load(os.path.join(tmp, SAVED_MODEL)).signatures['serving_default']
      report['saved_model'] = flax_error(source, lambda x: serving(images=tf.constant(x))['logits'].numpy())
      log(f'[export] SavedModel: largest |logit - Flax| {report["saved_model"]["max_abs_error"]:.2g}')
    flatbuffers = {}
    if 'tflite' in formats:
      flatbuffers['float32'] = (FLOAT_TFLITE, converted.tflite())
    if 'int8' in formats:
      images = calibration_images(source.data, source.resolution, calibration_count)
      flatbuffers['int8'] = (INT8_TFLITE, converted.tflite_int8(images))
    for kind, (name, content) in flatbuffers.items():
      with open(os.path.join(tmp, name), 'wb') as f:
        f.write(content)
      runner = interpreter(content)
      entry = {'file': name, 'bytes': len(content),
               **flax_error(source, lambda x, r=runner: np.concatenate([run_tflite(r, i[None]) for i in x]))}
      if kind == 'int8':
        entry['calibration_images'] = len(images)
        entry['input_quantization'] = _quantization(runner.get_input_details()[0])
        entry['output_quantization'] = _quantization(runner.get_output_details()[0])
      if evaluate and source.data is not None:
        entry.update(tflite_accuracy(content, source.data, source.resolution))
      report[kind] = entry
      top1 = f', top-1 {100 * entry["top1"]:.2f}% on {entry["eval_examples"]} images' if 'top1' in entry else ''
      log(f'[export] {name}: {len(content) / 1e6:.2f} MB, largest |logit - Flax| {entry["max_abs_error"]:.2g} '
          f'(relative {entry["relative_error"]:.2g}){top1}')
    report['export_s'] = time.perf_counter() - start
    with open(os.path.join(tmp, REPORT), 'w') as f:
      json.dump(report, f, indent=2, sort_keys=True)
      f.write('\n')
  return report


# --- CLI ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
  parser = cli.OneLineParser(prog='python -m mnet_jax.export', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, metavar='DIR',
                      help='a run dir, or a converted checkpoint dir (mnet_jax.convert)')
  parser.add_argument('--out', metavar='DIR', help='the directory to create (default: WORKDIR/export)')
  parser.add_argument('--formats', default=','.join(DEFAULT_FORMATS),
                      help=f'comma-separated, some of {", ".join(FORMATS)} (default: %(default)s)')
  parser.add_argument('--resolution', type=int, help="the input size (default: the run's)")
  parser.add_argument('--data_from', metavar='RUN_DIR',
                      help="a run dir whose config.json gives the dataset (and resolution): the source's own by "
                           'default; needed for int8 from a converted checkpoint')
  parser.add_argument('--calibration_images', type=int, default=CALIBRATION_IMAGES,
                      help='int8: training images to calibrate on (default: %(default)s)')
  parser.add_argument('--no_eval', action='store_true', help='skip top-1 on the eval split')
  parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --out')
  parser.add_argument('--verbose', action='store_true', help='show tracebacks of unexpected errors')
  args = parser.parse_args(argv)
  from absl import logging

  # Orbax's and TF's notes (e.g. a checkpoint without Orbax's newest metadata file) are for --verbose.
  logging.set_verbosity(logging.INFO if args.verbose else logging.ERROR)
  out = args.out or os.path.join(args.workdir, 'export')
  formats = [f.strip() for f in args.formats.split(',') if f.strip()]

  def run() -> int:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
      raise ExportError(f'unknown format {unknown[0] if unknown else "(none)"!r} in --formats; expected some of '
                        f'{", ".join(FORMATS)}')
    if args.calibration_images < 1:
      raise ExportError(f'--calibration_images must be positive, got {args.calibration_images}')
    check_output_directory(os.path.abspath(out), args.overwrite, ExportError)  # again in export
    source = load_source(args.workdir, args.resolution, args.data_from)
    export(source, out, formats, args.calibration_images, not args.no_eval, args.overwrite)
    print(f'wrote {out}: {", ".join(formats)} of {args.workdir} ({source.what}), {source.resolution} px')
    return 0

  # ExportError, ConvertError, a dataset that is not there, a failed write: one line, exit 2.
  return cli.run_reporting_errors(run, args.verbose)


if __name__ == '__main__':
  cli.configure_tensorflow()
  cli.exit_without_collecting()
  sys.exit(main())
