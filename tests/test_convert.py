"""mnet_jax.convert against Keras' own forward pass: Keras and TF-slim files in, Keras' logits out.

Every reference is a `keras.applications.MobileNet` with random weights and random BatchNorm statistics,
run by Keras on random images in [-1, 1]. The slim checkpoints are written here by TensorFlow under
slim's variable names, from such a Keras model. Resolutions are multiples of 32, where Keras' explicit
(0, 1) padding of stride-2 convolutions equals mnet_jax's 'SAME'.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from mnet_jax import convert
from mnet_jax.models import MobileNetV1

# Keras' saving under numpy 2 warns once per weight: 1,400 lines in the summary, none about this code.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (32, 64)
NUM_CLASSES = 10
TOLERANCE = 1e-4  # max |mnet_jax - Keras| / max |Keras|


@dataclasses.dataclass(frozen=True)
class KerasCase:
  alpha: float
  num_classes: int
  files: dict[str, str]  # suffix -> path
  weights: dict[str, np.ndarray]  # 'layer/variable' -> value
  images: dict[int, np.ndarray]  # resolution -> batch
  logits: dict[int, np.ndarray]  # resolution -> Keras' logits


def keras_mobilenet(alpha: float, resolution: int, num_classes: int):
  import keras

  return keras.applications.MobileNet(input_shape=(resolution, resolution, 3), alpha=alpha, weights=None,
                                      classes=num_classes, classifier_activation=None)


def randomize(model, seed: int) -> None:
  """He-normal kernels and random BatchNorm: gamma, beta, moving mean and variance all away from 1 and 0."""
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    shape, name = tuple(weight.shape), weight.name
    if name == 'kernel':
      fan_in = np.prod(shape[:-1]) if shape[-1] != 1 else np.prod(shape[:2])  # depthwise: (3, 3, C, 1)
      value = rng.normal(0, np.sqrt(2 / fan_in), shape)
    elif name in ('gamma', 'moving_variance'):
      value = rng.uniform(0.5, 2.0, shape)
    else:  # beta, moving_mean, bias
      value = rng.normal(0, 0.1, shape)
    weight.assign(value.astype(np.float32))


def build_case(alpha: float, num_classes: int, directory: Path, seed: int) -> KerasCase:
  """A Keras MobileNet saved as .keras and .h5, and its logits on random images at each resolution."""
  rng = np.random.default_rng(seed)
  models = {r: keras_mobilenet(alpha, r, num_classes) for r in RESOLUTIONS}
  randomize(models[RESOLUTIONS[0]], seed)
  for resolution in RESOLUTIONS[1:]:
    models[resolution].set_weights(models[RESOLUTIONS[0]].get_weights())
  directory.mkdir(parents=True, exist_ok=True)
  files = {suffix: str(directory / f'mobilenet{suffix}') for suffix in ('.keras', '.h5')}
  for path in files.values():
    models[RESOLUTIONS[0]].save(path)
  weights = {f'{layer.name}/{w.name}': np.asarray(w.numpy()) for layer in models[RESOLUTIONS[0]].layers
             for w in layer.weights}
  images = {r: rng.uniform(-1, 1, (2, r, r, 3)).astype(np.float32) for r in RESOLUTIONS}
  logits = {r: np.asarray(models[r](images[r], training=False)) for r in RESOLUTIONS}
  return KerasCase(alpha, num_classes, files, weights, images, logits)


@pytest.fixture(scope='module')
def keras_case(tmp_path_factory):
  """keras_case(alpha, num_classes=NUM_CLASSES): built once per module (and xdist worker)."""
  root = tmp_path_factory.mktemp('keras')

  @functools.cache
  def build(alpha: float, num_classes: int = NUM_CLASSES) -> KerasCase:
    return build_case(alpha, num_classes, root / f'{alpha}_{num_classes}', seed=int(alpha * 100) + num_classes)

  return build


@functools.cache
def forward(alpha: float, num_classes: int):
  """mnet_jax's logits, compiled once per model (the default depthwise implementation)."""
  return jax.jit(MobileNetV1(alpha=alpha, num_classes=num_classes).apply)


def relative_error(logits: np.ndarray, reference: np.ndarray) -> float:
  assert logits.shape == reference.shape
  return float(np.max(np.abs(logits - reference)) / np.max(np.abs(reference)))


def assert_keras_logits(fields: dict, variables: dict, case: KerasCase, keep=slice(None)) -> None:
  model = MobileNetV1(**fields)
  for resolution in RESOLUTIONS:
    logits = np.asarray(forward(model.alpha, model.num_classes)(variables, case.images[resolution]))
    error = relative_error(logits, case.logits[resolution][:, keep])
    assert error <= TOLERANCE, f'alpha {case.alpha} at {resolution}: relative error {error:.2e}'


def assert_alive(case: KerasCase) -> None:
  """Random BatchNorm statistics must leave the reference alive, so that a wrong layout or a swapped
  statistic shows: logits that differ across classes, and across images by far more than the tolerance
  (a random network averages most of its input away: they differ by ~5%)."""
  for logits in case.logits.values():
    assert np.std(logits) > 0.1 * np.max(np.abs(logits))
    assert np.max(np.abs(logits[0] - logits[1])) > 100 * TOLERANCE * np.max(np.abs(logits))


@pytest.mark.parametrize('suffix', ['.keras', '.h5'])
@pytest.mark.parametrize('alpha', ALPHAS)
def test_keras_file_gives_keras_logits(keras_case, tmp_path, alpha, suffix):
  case = keras_case(alpha)
  assert_alive(case)
  imported = convert.from_keras(case.files[suffix])
  assert (imported.alpha, imported.num_classes, imported.source) == (alpha, NUM_CLASSES, 'keras')
  convert.save(imported, str(tmp_path / 'out'))
  fields, variables = convert.load(str(tmp_path / 'out'))
  assert_keras_logits(fields, variables, case)
  info = convert.read_info(str(tmp_path / 'out'))
  assert info['source_path'] == os.path.abspath(case.files[suffix]) and info['eval_preprocess'] == 'slim'


def keras2_weights_file(case: KerasCase, out: Path) -> str:
  """The layout of Keras' own published weights (mobilenet_1_0_224_tf.h5, Keras 2's `save_weights`): one group
  per layer at the root, weights named 'layer/variable:0', the depthwise kernel 'depthwise_kernel'."""
  layers = sorted({name.split('/')[0] for name in case.weights})
  with h5py.File(out, 'w') as f:
    f.attrs['layer_names'] = [layer.encode() for layer in layers]
    for layer in layers:
      names = {name: f'{name.replace("/kernel", "/depthwise_kernel") if "_dw_" in name else name}:0'
               for name in case.weights if name.split('/')[0] == layer}
      f.create_group(layer).attrs['weight_names'] = [n.encode() for n in names.values()]
      for name, weight_name in names.items():
        f[layer].create_dataset(weight_name, data=case.weights[name])
  return str(out)


def test_keras2_weights_file_imports_as_the_keras3_model(keras_case, tmp_path):
  case = keras_case(0.25)
  expected = convert.from_keras(case.files['.h5']).variables  # matches Keras (test above)
  imported = convert.from_keras(keras2_weights_file(case, tmp_path / 'mobilenet_2_5_224_tf.h5'), 0.25, NUM_CLASSES)
  jax.tree.map(np.testing.assert_array_equal, imported.variables, expected)


# --- TF-slim -----------------------------------------------------------------------------------

def slim_name(keras_name: str) -> str:
  """tensorflow/models research/slim/nets/mobilenet_v1.py's variable for a Keras MobileNet weight."""
  layer, variable = keras_name.split('/')
  if layer == 'conv_preds':
    return 'MobilenetV1/Logits/Conv2d_1c_1x1/' + {'kernel': 'weights', 'bias': 'biases'}[variable]
  base = layer.removesuffix('_bn')  # conv1, conv_dw_<i> or conv_pw_<i>
  kind = {'conv1': 'conv', 'dw': 'depthwise', 'pw': 'pointwise'}[base if base == 'conv1' else base.split('_')[1]]
  scope = 'MobilenetV1/Conv2d_0' if kind == 'conv' else f'MobilenetV1/Conv2d_{base.split("_")[2]}_{kind}'
  if layer.endswith('_bn'):
    return f'{scope}/BatchNorm/{variable}'
  return f'{scope}/{"depthwise_weights" if kind == "depthwise" else "weights"}'


def write_tf_checkpoint(prefix: Path, tensors: dict[str, np.ndarray]) -> str:
  """A name-keyed TF checkpoint (prefix.index + prefix.data-00000-of-00001), the format slim's Saver wrote."""
  import tensorflow as tf

  prefix.parent.mkdir(parents=True, exist_ok=True)
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tensors[n] for n in names])
  return str(prefix)


@pytest.fixture(scope='module')
def slim_case(keras_case, tmp_path_factory):
  """A 1001-class Keras model, and slim checkpoints of it: 'plain' (the weights, as the published ones) and
  'trained' (EMA shadows of the trainable weights, which hold the model's values while the raw weights are
  off; RMSProp slots; global_step)."""
  case = keras_case(0.5, 1001)
  root = tmp_path_factory.mktemp('slim')
  rng = np.random.default_rng(7)
  plain = {slim_name(name): value for name, value in case.weights.items()}
  trained = {'global_step': np.int64(1234)}
  for name, value in plain.items():
    if name.endswith(('moving_mean', 'moving_variance')):
      trained[name] = value  # TF's EMA of trainable variables only, as the object detection API keeps it
    else:
      trained[name] = value + rng.normal(0, 0.5, value.shape).astype(np.float32)
      trained[f'{name}/ExponentialMovingAverage'] = value
      trained[f'{name}/RMSProp'] = trained[f'{name}/RMSProp_1'] = np.ones_like(value)
  return case, {kind: write_tf_checkpoint(root / kind / 'model.ckpt', tensors)
                for kind, tensors in (('plain', plain), ('trained', trained))}


@pytest.mark.parametrize('drop_background', [True, False])
def test_slim_checkpoint_gives_keras_logits(slim_case, drop_background):
  case, prefixes = slim_case
  assert_alive(case)
  imported = convert.from_slim(prefixes['trained'], drop_background=drop_background)
  assert imported.num_classes == (1000 if drop_background else 1001)
  assert (imported.alpha, imported.background_dropped, imported.ema) == (0.5, drop_background, True)
  assert_keras_logits(imported.model_fields(), imported.variables, case, slice(1 if drop_background else 0, None))


def test_slim_plain_checkpoint_and_raw_weights(slim_case):
  case, prefixes = slim_case
  reference = convert.from_slim(prefixes['trained'], drop_background=False)  # matches Keras (test above)
  plain = convert.from_slim(prefixes['plain'] + '.index', drop_background=False, alpha=0.5, num_classes=1001)
  assert not plain.ema
  jax.tree.map(np.testing.assert_array_equal, plain.variables, reference.variables)
  raw = convert.from_slim(prefixes['trained'], drop_background=False, ema=False)
  assert not raw.ema
  kernel = ('params', 'block1_depthwise', 'kernel')
  get = lambda imported: functools.reduce(dict.__getitem__, kernel, imported.variables)  # noqa: E731
  assert not np.allclose(get(raw), get(reference))
  np.testing.assert_array_equal(raw.variables['batch_stats']['stem_bn']['mean'],
                                reference.variables['batch_stats']['stem_bn']['mean'])


# --- Files that do not fit ---------------------------------------------------------------------

def without(path: str, layer: str, weight: str, out: Path) -> str:
  """A copy of a legacy .h5 model whose `layer` lacks `weight`, as if Keras had not saved it."""
  shutil.copy(path, out)
  with h5py.File(out, 'r+') as f:
    group = f['model_weights'][layer]
    del group[weight]
    group.attrs['weight_names'] = [n for n in group.attrs['weight_names'] if n != weight]
  return str(out)


def truncated(path: str, out: Path) -> str:
  data = Path(path).read_bytes()
  out.write_bytes(data[:len(data) // 2])
  return str(out)


def truncated_checkpoint(prefix: str, out: Path) -> str:
  shutil.copytree(Path(prefix).parent, out)
  data = out / f'{Path(prefix).name}.data-00000-of-00001'
  truncated(str(data), data)
  return str(out / Path(prefix).name)


@pytest.fixture(scope='module')
def bad_files(slim_case, tmp_path_factory) -> dict[str, tuple[list[str], str]]:
  """name -> (CLI arguments but --out, text the error line must hold)."""
  case, prefixes = slim_case
  tmp = tmp_path_factory.mktemp('bad')
  h5, plain, text = case.files['.h5'], prefixes['plain'], tmp / 'notes.txt'
  text.write_text('not a model\n')
  weights = {slim_name(name): value for name, value in case.weights.items()}
  depthwise = 'MobilenetV1/Conv2d_3_depthwise/depthwise_weights'
  missing = {name: value for name, value in weights.items() if name != 'MobilenetV1/Conv2d_3_depthwise/BatchNorm/gamma'}
  transposed = {**weights, depthwise: weights[depthwise].reshape(3, 3, 1, -1)}  # mnet_jax's layout, not slim's
  quantized = {**weights, 'MobilenetV1/Conv2d_0/act_quant/min': np.float32(-6)}  # the _quant models' variables
  return {
      'keras wrong alpha': (['--keras', h5, '--alpha', '0.75'], 'conv_pw_13/kernel has 512 output channels'),
      'keras wrong classes': (['--keras', h5, '--num_classes', '1000'], 'gives 1001 classes, not the 1000'),
      'keras missing variable': (
          ['--keras', without(h5, 'conv_dw_3_bn', 'conv_dw_3_bn/moving_variance', tmp / 'm.h5')],
          'missing variable conv_dw_3_bn/moving_variance'),
      'keras truncated .h5': (['--keras', truncated(h5, tmp / 't.h5')], 'truncated'),
      'keras truncated .keras': (['--keras', truncated(case.files['.keras'], tmp / 't.keras')], 'truncated'),
      'keras text file': (['--keras', str(text)], 'neither a .keras (zip) nor an .h5'),
      'keras no file': (['--keras', str(tmp / 'nothing.keras')], 'no such file'),
      'slim wrong alpha': (['--slim', plain, '--alpha', '1'], 'Conv2d_13_pointwise/weights has 512'),
      'slim wrong classes': (['--slim', plain, '--num_classes', '1001'], 'gives 1000 classes after dropping'),
      'slim missing variable': (['--slim', write_tf_checkpoint(tmp / 'missing' / 'model.ckpt', missing)],
                                'missing variable MobilenetV1/Conv2d_3_depthwise/BatchNorm/gamma'),
      'slim wrong shape': (['--slim', write_tf_checkpoint(tmp / 'transposed' / 'model.ckpt', transposed)],
                           f'{depthwise} has shape (3, 3, 1, 64), a MobileNet V1 of alpha 0.5 with 1001 classes '
                           'needs (3, 3, 64, 1)'),
      'slim unexpected variable': (['--slim', write_tf_checkpoint(tmp / 'quantized' / 'model.ckpt', quantized)],
                                   'unexpected variable MobilenetV1/Conv2d_0/act_quant/min, not part of a float'),
      'slim truncated': (['--slim', truncated_checkpoint(plain, tmp / 'truncated')], 'truncated'),
      'slim text file': (['--slim', str(text)], 'no TF checkpoint'),
      'slim no checkpoint': (['--slim', str(tmp / 'nothing.ckpt')], 'no TF checkpoint'),
  }


BAD_FILES = ('keras wrong alpha', 'keras wrong classes', 'keras missing variable', 'keras truncated .h5',
             'keras truncated .keras', 'keras text file', 'keras no file', 'slim wrong alpha', 'slim wrong classes',
             'slim missing variable', 'slim wrong shape', 'slim unexpected variable', 'slim truncated',
             'slim text file', 'slim no checkpoint')


def assert_one_error_line(stdout: str, stderr: str, match: str) -> None:
  lines = stderr.strip().splitlines()
  assert stdout == '' and len(lines) == 1 and lines[0].startswith('error: ') and match in lines[0], stderr


def test_bad_files_end_in_one_line_and_exit_2(bad_files, tmp_path, capsys):
  assert sorted(bad_files) == sorted(BAD_FILES)
  for name in BAD_FILES:
    argv, match = bad_files[name]
    out = tmp_path / name.replace(' ', '_')
    assert convert.main([*argv, '--out', str(out)]) == 2, name
    captured = capsys.readouterr()
    assert_one_error_line(captured.out, captured.err, match)
  assert list(tmp_path.iterdir()) == []  # no output, and no temporary folder left behind


@pytest.mark.parametrize('name', ['keras missing variable', 'slim truncated'])
def test_cli_process_prints_one_line_and_exits_2(bad_files, tmp_path, name):
  # The whole process: no start-up log of TensorFlow, JAX or Orbax around the one line.
  argv, match = bad_files[name]
  env = {**os.environ, 'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run([sys.executable, '-m', 'mnet_jax.convert', *argv, '--out', str(tmp_path / 'out')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert_one_error_line(result.stdout, result.stderr, match)
  assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_replaces_only_when_asked(slim_case, tmp_path, capsys):
  case, prefixes = slim_case
  out = tmp_path / 'imported'
  assert convert.main(['--keras', case.files['.keras'], '--out', str(out)]) == 0
  fields, variables = convert.load(str(out))
  expected = convert.from_keras(case.files['.keras'])
  assert fields == expected.model_fields()
  jax.tree.map(np.testing.assert_array_equal, variables, expected.variables)
  capsys.readouterr()
  assert convert.main(['--slim', prefixes['plain'], '--out', str(out)]) == 2
  assert_one_error_line(*capsys.readouterr(), 'not empty')
  assert convert.read_info(str(out))['source'] == 'keras'
  assert convert.main(['--slim', prefixes['plain'], '--out', str(out), '--overwrite']) == 0
  info = convert.read_info(str(out))
  assert (info['source'], info['num_classes'], info['background_dropped'], info['ema']) == ('slim', 1000, True, False)
  assert [p.name for p in tmp_path.iterdir()] == ['imported']
