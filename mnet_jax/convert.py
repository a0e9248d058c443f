"""Import published MobileNet V1 weights (Keras or TF-slim) as a directory mnet_jax can evaluate or fine-tune.

Sources, read as data (HDF5, JSON, TF checkpoint tables; the readers are `weight_sources.py`): nothing in a file
is executed or unpickled.
  keras  `keras.applications.MobileNet`, any alpha and class count, saved as `.keras` (Keras 3) or `.h5`
         (a legacy HDF5 model or weights file, such as Keras' own mobilenet_1_0_224_tf.h5).
  slim   a TF-slim `mobilenet_v1` checkpoint (PREFIX.index + PREFIX.data-*), as the 16 published
         mobilenet_v1_<alpha>_<resolution> models; variable names from tensorflow/models
         research/slim/nets/mobilenet_v1.py. Its logit 0 is "background": dropped by default, so that
         logit i is TFDS imagenet2012's label i (both order the 1000 synsets by WordNet id).

Output directory OUT (written to a temporary sibling, then renamed: never half written):
  OUT/variables   an Orbax checkpoint (PyTreeCheckpointer) of {'params': ..., 'batch_stats': ...}, float32,
                  the tree `MobileNetV1(**model_fields).init` builds
  OUT/model.json  {"format": 1, "alpha", "num_classes", "variant", "min_depth", "activation", "bn_epsilon",
                   "source": "keras" | "slim", "source_path", "background_dropped", "ema",
                   "eval_preprocess": "slim"}: inputs in [-1, 1], as mnet_jax's pipeline makes them
`load(OUT)` returns (model_fields, variables): `MobileNetV1(**model_fields).apply(variables, images)`.

Exactness: slim pads with 'SAME' as mnet_jax does. Keras pads a stride-2 convolution's input by (0, 1) and
then convolves 'valid', the same as 'SAME' only for even inputs, i.e. resolutions that are multiples of 32
(every published one). Slim's final 7x7 'VALID' average pool is the global mean up to resolution 224.

    python -m mnet_jax.convert --slim=mobilenet_v1_1.0_224.ckpt --out=imported/slim_1.0_224
    python -m mnet_jax.convert --keras=mobilenet.keras --out=imported/keras --alpha=0.5 --num_classes=1000
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np

from mnet_jax import architecture, cli
from mnet_jax.cli import one_line
from mnet_jax.fileio import check_output_directory, staged_directory
from mnet_jax.weight_sources import ConvertError, Source, keras_source, slim_source

FORMAT_VERSION = 1
# What both sources' weights were trained with: slim's `mobilenet_v1_arg_scope` (ReLU6, BatchNorm with
# epsilon 0.001, min_depth 8) and Keras' MobileNet (ReLU(6.), BatchNormalization's default epsilon 1e-3).
FIXED_FIELDS = {'variant': 'separable', 'min_depth': 8, 'activation': 'relu6', 'bn_epsilon': 1e-3}
_SLIM_CLASSES_WITH_BACKGROUND = 1001


@dataclasses.dataclass(frozen=True)
class Imported:
  """mnet_jax variables of a MobileNetV1 and where they came from."""

  alpha: float
  num_classes: int
  variables: dict[str, Any]  # {'params': ..., 'batch_stats': ...} of float32 numpy arrays
  source: str  # 'keras' | 'slim'
  source_path: str
  background_dropped: bool = False
  ema: bool = False  # slim: the ExponentialMovingAverage shadows were used

  def model_fields(self) -> dict[str, Any]:
    return {'alpha': self.alpha, 'num_classes': self.num_classes, **FIXED_FIELDS}


# --- Mapping -----------------------------------------------------------------------------------

def _source_shape(module: str, leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The TF layout both sources use. (3, 3, C, 1) against mnet_jax's (3, 3, 1, C), and (1, 1, C, K) against
  (C, K), hold the same numbers in the same order: each converts by a reshape."""
  if leaf == 'kernel' and module.endswith('_depthwise'):
    return (shape[0], shape[1], shape[3], shape[2])
  if leaf == 'kernel' and module == 'classifier':
    return (1, 1, *shape)
  return tuple(shape)


def _abstract_variables(alpha: float, num_classes: int) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from mnet_jax.models import MobileNetV1

  # 'grouped' traces fastest; both depthwise implementations share one parameter layout.
  model = MobileNetV1(alpha=alpha, num_classes=num_classes, depthwise_impl='grouped', **FIXED_FIELDS)
  images = jax.ShapeDtypeStruct((1, architecture.MIN_RESOLUTION, architecture.MIN_RESOLUTION, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def _convert(source: Source, alpha: float | None, num_classes: int | None,
             drop_background: bool) -> tuple[float, int, dict[str, Any]]:
  """(alpha, num_classes, variables): every mnet_jax variable from one source variable, shapes checked."""
  import flax

  last = architecture.layers(1.0, architecture.MIN_RESOLUTION)[-2].name  # the widest: 1024 alpha channels
  width_name, classes_name = source.name_of(last, 'kernel'), source.name_of('classifier', 'bias')
  for name, hint in ((width_name, ''), (classes_name, ' (a model saved without its classifier?)')):
    if name not in source.shapes:
      raise ConvertError(f'{source.path}: missing variable {name}{hint}')
  width, file_classes = source.shapes[width_name][-1], source.shapes[classes_name][-1]
  if alpha is None:
    alpha = width / 1024
  elif architecture.check_alpha(alpha) or architecture.scaled_channels(1024, alpha) != width:
    raise ConvertError(f'{source.path}: {width_name} has {width} output channels (alpha {width / 1024:g}), '
                       f'alpha {alpha:g} needs {architecture.scaled_channels(1024, alpha)}')
  offset = 1 if drop_background else 0
  if drop_background and file_classes != _SLIM_CLASSES_WITH_BACKGROUND:
    raise ConvertError(f'{source.path}: {classes_name} has {file_classes} classes, not ImageNet\'s 1001 with '
                       'background; keep them all (--keep_background)')
  if num_classes is not None and num_classes != file_classes - offset:
    dropped = ' after dropping the background class' if offset else ''
    raise ConvertError(f'{source.path}: {classes_name} gives {file_classes - offset} classes{dropped}, '
                       f'not the {num_classes} requested')

  abstract = flax.traverse_util.flatten_dict(_abstract_variables(alpha, file_classes))
  values, used = {}, set()
  # In network order, so that the first mismatch reported is the first in the file's network too.
  for path in sorted(abstract, key=lambda p: (architecture.network_position(p[1]), p)):
    collection, module, leaf = path
    name, shape = source.name_of(module, leaf), tuple(abstract[path].shape)
    expected = _source_shape(module, leaf, shape)
    if name not in source.shapes:
      raise ConvertError(f'{source.path}: missing variable {name} (for {collection}/{module}/{leaf})')
    if tuple(source.shapes[name]) != expected:
      raise ConvertError(f'{source.path}: {name} has shape {tuple(source.shapes[name])}, a MobileNet V1 of '
                         f'alpha {alpha:g} with {file_classes} classes needs {expected}')
    value = np.asarray(source.read(name), np.float32).reshape(shape)
    if not np.all(np.isfinite(value)):
      raise ConvertError(f'{source.path}: {name} holds non-finite values')
    if module == 'classifier':
      value = value[..., offset:]
    values[path] = value
    used.update({name, name.removesuffix('/ExponentialMovingAverage')})
  unexpected = sorted(name for name in source.shapes if name not in used and not source.ignorable(name, used))
  if unexpected:
    more = f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''
    raise ConvertError(f'{source.path}: unexpected variable {unexpected[0]}{more}, not part of a float MobileNet V1')
  return alpha, file_classes - offset, flax.traverse_util.unflatten_dict(values)


def from_keras(path: str, alpha: float | None = None, num_classes: int | None = None) -> Imported:
  """A `keras.applications.MobileNet` saved as .keras or .h5; `alpha`/`num_classes`, if given, are checked."""
  source = keras_source(path)
  alpha, num_classes, variables = _convert(source, alpha, num_classes, drop_background=False)
  return Imported(alpha, num_classes, variables, 'keras', os.path.abspath(path))


def from_slim(prefix: str, drop_background: bool = True, alpha: float | None = None,
              num_classes: int | None = None, ema: bool = True) -> Imported:
  """A TF-slim mobilenet_v1 checkpoint; its EMA shadows where present (unless `ema` is False)."""
  source = slim_source(prefix, ema)
  alpha, num_classes, variables = _convert(source, alpha, num_classes, drop_background)
  used_ema = ema and any(n.endswith('/ExponentialMovingAverage') for n in source.shapes
                         if n.startswith('MobilenetV1/'))
  return Imported(alpha, num_classes, variables, 'slim', os.path.abspath(source.path), drop_background, used_ema)


# --- The output directory ----------------------------------------------------------------------

def save(imported: Imported, out_dir: str, overwrite: bool = False) -> None:
  """Write OUT/variables and OUT/model.json into a temporary sibling, then rename it to `out_dir`."""
  import orbax.checkpoint as ocp

  out = os.path.abspath(out_dir)
  check_output_directory(out, overwrite, ConvertError)
  with staged_directory(out, ConvertError) as tmp:
    ocp.PyTreeCheckpointer().save(os.path.join(tmp, 'variables'), imported.variables)
    info = {'format': FORMAT_VERSION, **imported.model_fields(), 'source': imported.source,
            'source_path': imported.source_path, 'background_dropped': imported.background_dropped,
            'ema': imported.ema, 'eval_preprocess': 'slim'}
    with open(os.path.join(tmp, 'model.json'), 'w') as f:
      json.dump(info, f, indent=2, sort_keys=True)
      f.write('\n')


def read_info(path: str) -> dict[str, Any]:
  """OUT/model.json of an imported model."""
  try:
    with open(os.path.join(path, 'model.json')) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise ConvertError(f'{path}: not an imported model ({one_line(e)})') from e
  if info.get('format') != FORMAT_VERSION:
    raise ConvertError(f'{path}: model.json has format {info.get("format")!r}, expected {FORMAT_VERSION}')
  return info


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model_fields, variables) of an imported model: `MobileNetV1(**model_fields).apply(variables, images)`."""
  import jax
  import orbax.checkpoint as ocp

  info = read_info(path)
  checkpointer = ocp.PyTreeCheckpointer()
  directory = os.path.join(os.path.abspath(path), 'variables')
  metadata = checkpointer.metadata(directory).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  variables = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return {key: info[key] for key in ('alpha', 'num_classes', *FIXED_FIELDS)}, variables


# --- CLI ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
  parser = cli.OneLineParser(prog='python -m mnet_jax.convert', description=__doc__.split('\n')[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--keras', metavar='PATH', help='a keras.applications.MobileNet saved as .keras or .h5')
  source.add_argument('--slim', metavar='PREFIX', help='a TF-slim mobilenet_v1 checkpoint prefix (model.ckpt)')
  parser.add_argument('--out', required=True, metavar='DIR', help='the directory to create')
  parser.add_argument('--alpha', type=float, help='the width multiplier expected (checked)')
  parser.add_argument('--num_classes', type=int, help='the class count expected after import (checked)')
  parser.add_argument('--keep_background', action='store_true', help='slim: keep logit 0 ("background")')
  parser.add_argument('--no_ema', action='store_true', help='slim: the raw weights even where EMA shadows exist')
  parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --out')
  parser.add_argument('--verbose', action='store_true', help='show tracebacks of unexpected errors')
  args = parser.parse_args(argv)

  def run() -> int:
    if args.keras and (args.keep_background or args.no_ema):
      raise ConvertError('--keep_background and --no_ema apply to --slim checkpoints only')
    check_output_directory(os.path.abspath(args.out), args.overwrite, ConvertError)  # again in save
    if args.keras:
      imported = from_keras(args.keras, args.alpha, args.num_classes)
    else:
      imported = from_slim(args.slim, not args.keep_background, args.alpha, args.num_classes, not args.no_ema)
    save(imported, args.out, args.overwrite)
    notes = [note for note, on in (('background class dropped', imported.background_dropped),
                                   ('EMA weights', imported.ema)) if on]
    print(f'wrote {args.out}: MobileNet V1 alpha {imported.alpha:g}, {imported.num_classes} classes, from '
          f'{imported.source} {imported.source_path}' + (f' ({", ".join(notes)})' if notes else ''))
    return 0

  # ConvertError, a bad --alpha or a failed write: one line, exit 2.
  return cli.run_reporting_errors(run, args.verbose)


if __name__ == '__main__':
  cli.configure_tensorflow()
  cli.exit_without_collecting()
  sys.exit(main())
