"""Readers of published MobileNet V1 weights, as data (HDF5, JSON, TF checkpoint tables): nothing in a file is
executed or unpickled. Each gives a `Source`: its variables' names and shapes, a reader of one variable, and the
source name of each mnet_jax variable; `convert` maps them onto mnet_jax's variables and checks every shape.
The formats (Keras `.keras`/`.h5`, TF-slim checkpoints) are listed once, in `convert`'s docstring.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from mnet_jax.cli import one_line

_BATCH_NORM = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}
# Keras 3 stores a layer's weights under its class name in snake case, numbered in model order
# (keras/src/saving/saving_lib.py, `_save_container_state`), not under the layer's own name.
_KERAS3_GROUPS = {'Conv2D': 'conv2d', 'DepthwiseConv2D': 'depthwise_conv2d',
                  'BatchNormalization': 'batch_normalization'}


class ConvertError(ValueError):
  """A file that cannot be imported; the message is one line naming what does not fit."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A file's variables: names and shapes, `read(name)`, and the source name of each mnet_jax (module, leaf)."""

  path: str
  shapes: dict[str, tuple[int, ...]]
  read: Callable[[str], np.ndarray]
  name_of: Callable[[str, str], str]  # (mnet_jax module, leaf) -> source variable
  ignorable: Callable[[str, set[str]], bool] = lambda name, used: False


# --- Keras -------------------------------------------------------------------------------------

def _keras_name(module: str, leaf: str) -> str:
  layer = module.removesuffix('_bn')
  if layer in ('stem', 'classifier'):
    keras_layer = {'stem': 'conv1', 'classifier': 'conv_preds'}[layer]
  else:  # block3_depthwise -> conv_dw_3, block3_pointwise -> conv_pw_3
    index, kind = re.fullmatch(r'block(\d+)_(depthwise|pointwise)', layer).groups()
    keras_layer = f'conv_{kind[0]}w_{index}'
  if module.endswith('_bn'):
    return f'{keras_layer}_bn/{_BATCH_NORM[leaf]}'
  return f'{keras_layer}/{leaf}'


def _keras3_tensors(weights: Any, config: dict) -> dict[str, np.ndarray]:
  """Weights of a `.keras` file's model.weights.h5, keyed 'layer_name/variable' by walking config.json."""
  if config.get('class_name') != 'Functional':
    raise ConvertError(f'expected a Functional keras.applications.MobileNet, found a {config.get("class_name")}')
  tensors, unread, counts = {}, set(), Counter()
  weights['layers'].visititems(lambda name, obj: unread.add(name) if hasattr(obj, 'shape') else None)
  for layer in config['config']['layers']:
    kind, settings = layer['class_name'], layer['config']
    if kind not in _KERAS3_GROUPS:
      continue
    group = _KERAS3_GROUPS[kind] + (f'_{counts[kind]}' if counts[kind] else '')
    counts[kind] += 1
    if kind == 'BatchNormalization':
      names = [n for n, on in (('gamma', settings.get('scale', True)), ('beta', settings.get('center', True)),
                               ('moving_mean', True), ('moving_variance', True)) if on]
    else:
      names = ['kernel'] + (['bias'] if settings.get('use_bias', True) else [])
    for index, name in enumerate(names):
      key = f'{group}/vars/{index}'
      if key in unread:
        tensors[f'{layer["name"]}/{name}'] = np.asarray(weights['layers'][key])
        unread.discard(key)
  if unread:
    raise ConvertError(f'unexpected weights layers/{sorted(unread)[0]}: not a keras.applications.MobileNet')
  return tensors


def _legacy_h5_tensors(h5: Any) -> dict[str, np.ndarray]:
  """Weights of a legacy HDF5 model (group model_weights) or weights file, keyed 'layer_name/variable'."""
  group = h5['model_weights'] if 'model_weights' in h5 else h5
  if 'layer_names' not in group.attrs:
    raise ConvertError('an HDF5 file without Keras layer names (a Keras 3 .weights.h5? save the model as .keras)')
  text = lambda s: s.decode() if isinstance(s, bytes) else str(s)  # noqa: E731
  tensors = {}
  for layer in map(text, group.attrs['layer_names']):
    for weight in map(text, group[layer].attrs['weight_names']):
      name = weight.split('/')[-1].removesuffix(':0')
      name = 'kernel' if name == 'depthwise_kernel' else name  # Keras 2's name for it
      tensors[f'{layer}/{name}'] = np.asarray(group[layer][weight])
  return tensors


def keras_source(path: str) -> Source:
  """A `.keras` or `.h5` file's weights, read whole (a MobileNet's are at most ~17 MB)."""
  import h5py

  if not os.path.isfile(path):
    raise ConvertError(f'no such file: {path}')
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read('config.json'))
        weights = io.BytesIO(archive.read('model.weights.h5'))
      with h5py.File(weights, 'r') as h5:
        tensors = _keras3_tensors(h5, config)
    elif h5py.is_hdf5(path):
      with h5py.File(path, 'r') as h5:
        tensors = _legacy_h5_tensors(h5)
    elif open(path, 'rb').read(4) == b'PK\x03\x04':  # a zip's first entry, but no directory at the end
      raise ConvertError('a damaged .keras (zip) file, truncated?')
    else:
      raise ConvertError('neither a .keras (zip) nor an .h5 (HDF5) file')
  except ConvertError as e:
    raise ConvertError(f'{path}: {e}') from e
  except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
    raise ConvertError(f'{path}: not a readable Keras model file (truncated?): {one_line(e)}') from e
  return Source(path, {name: value.shape for name, value in tensors.items()}, tensors.__getitem__, _keras_name)


# --- TF-slim -----------------------------------------------------------------------------------

def _slim_name(module: str, leaf: str) -> str:
  layer = module.removesuffix('_bn')
  if layer == 'classifier':
    return 'MobilenetV1/Logits/Conv2d_1c_1x1/' + {'kernel': 'weights', 'bias': 'biases'}[leaf]
  scope = 'MobilenetV1/Conv2d_' + ('0' if layer == 'stem' else layer.removeprefix('block'))  # Conv2d_3_depthwise
  if module.endswith('_bn'):
    return f'{scope}/BatchNorm/{_BATCH_NORM[leaf]}'
  return f'{scope}/{"depthwise_weights" if layer.endswith("_depthwise") else "weights"}'


def slim_source(prefix: str, ema: bool) -> Source:
  """A TF checkpoint's variables, read one at a time; with `ema`, the moving-average shadows where it has them."""
  prefix = re.sub(r'\.(index|meta|data-\d+-of-\d+)$', '', prefix)
  if not os.path.isdir(prefix) and not os.path.isfile(prefix + '.index'):
    hint = ' (pass the prefix: model.ckpt for model.ckpt.index)' if os.path.isfile(prefix) else ''
    raise ConvertError(f'no TF checkpoint at {prefix}: {prefix}.index does not exist{hint}')
  import tensorflow as tf

  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
  except (tf.errors.OpError, ValueError) as e:
    raise ConvertError(f'{prefix}: not a readable TF checkpoint (truncated?): {one_line(e)}') from e
  if not any(name.startswith('MobilenetV1/') for name in shapes):
    raise ConvertError(f'{prefix}: no MobilenetV1/ variables, not a TF-slim mobilenet_v1 checkpoint')

  def read(name: str) -> np.ndarray:
    try:
      return reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - TF reports a short data file as IndexError, OpError, ...
      raise ConvertError(f'{prefix}: cannot read {name} (truncated?): {one_line(e)}') from e

  def name_of(module: str, leaf: str) -> str:
    # Slim trains with an ExponentialMovingAverage of the weights when asked to (train_image_classifier's
    # --moving_average_decay) and then evaluates the shadows (eval_image_classifier restores them in place
    # of the weights): where a checkpoint carries them, they are the weights its accuracy was measured with.
    name = _slim_name(module, leaf)
    shadow = f'{name}/ExponentialMovingAverage'
    return shadow if ema and shadow in shapes else name

  def ignorable(name: str, used: set[str]) -> bool:
    # global_step and other bookkeeping outside the model's scope, and the slots of used variables
    # (optimizer accumulators such as RMSProp, RMSProp_1, Momentum; unused EMA shadows).
    return not name.startswith('MobilenetV1/') or name.rsplit('/', 1)[0] in used

  return Source(prefix, shapes, read, name_of, ignorable)
