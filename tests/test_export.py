"""mnet_jax.export: the exported models against the unfolded Flax model, computed here; the int8 model's reported
accuracy against the interpreter run here image by image; bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_folding import randomize
from test_train import final_params, subprocess_env

from mnet_jax import export, input_pipeline
from mnet_jax.models import MobileNetV1

# max |export - Flax| / max |Flax| in float32: measured 4e-7 to 2e-6 (SavedModel and TFLite); a wrong padding,
# a depthwise kernel transposed gave 8e-3 (this run) and 0.35 (random weights).
TOLERANCE = 1e-5


def interpreter(path_or_content, threads: int = 1):
  from ai_edge_litert.interpreter import Interpreter

  content = path_or_content if isinstance(path_or_content, bytes) else path_or_content.read_bytes()
  runner = Interpreter(model_content=content, num_threads=threads)
  runner.allocate_tensors()
  return runner


def invoke(runner, image: np.ndarray) -> np.ndarray:
  """One image in [-1, 1] through the interpreter, quantised and dequantised by hand where the model is int8."""
  inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
  value = image[None].astype(np.float32)
  if inp['dtype'] == np.int8:
    scale, zero_point = inp['quantization']
    value = np.clip(np.round(value / scale) + zero_point, -128, 127).astype(np.int8)
  runner.set_tensor(inp['index'], value)
  runner.invoke()
  logits = runner.get_tensor(out['index'])[0]
  if out['dtype'] == np.int8:
    scale, zero_point = out['quantization']
    logits = (logits.astype(np.float32) - zero_point) * scale
  return logits


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
  return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def ops(content: bytes) -> Counter:
  from ai_edge_litert.interpreter import Interpreter, OpResolverType

  # Without the default delegate: the graph as converted, not XNNPACK's partition of it.
  runner = Interpreter(model_content=content,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  runner.allocate_tensors()
  return Counter(op['op_name'] for op in runner._get_ops_details())


@pytest.fixture(scope='module')
def exported(reference_run, tmp_path_factory):
  """The reference run (α 0.25 at 32 px, 16 classes) exported in every format by the CLI."""
  workdir, _ = reference_run
  out = tmp_path_factory.mktemp('export') / 'out'
  result = subprocess.run([sys.executable, '-m', 'mnet_jax.export', f'--workdir={workdir}', f'--out={out}',
                           '--formats=saved_model,tflite,int8', '--calibration_images=64'],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, out, result.stdout


def flax_reference(workdir):
  """The run's model and its final variables, read from the checkpoint by Orbax here (not by the exporter)."""
  config = json.loads((workdir / 'config.json').read_text())
  state = final_params(workdir)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  model = MobileNetV1(alpha=config['model']['alpha'], num_classes=16, bn_epsilon=config['model']['bn_epsilon'])
  return model, variables, config


def test_float_exports_match_the_unfolded_flax_model(exported):
  workdir, out, stdout = exported
  model, variables, config = flax_reference(workdir)
  resolution = config['model']['resolution']
  images = np.random.default_rng(7).uniform(-1, 1, (3, resolution, resolution, 3)).astype(np.float32)
  expected = np.asarray(model.apply(variables, images, train=False))
  runner = interpreter(out / export.FLOAT_TFLITE)
  assert relative_error(np.stack([invoke(runner, image) for image in images]), expected) <= TOLERANCE
  import tensorflow as tf

  serving = tf.saved_model.load(str(out / export.SAVED_MODEL)).signatures['serving_default']
  assert relative_error(serving(images=tf.constant(images))['logits'].numpy(), expected) <= TOLERANCE  # any batch
  report = json.loads((out / export.REPORT).read_text())
  # The float model's top-1 is the run's own (Flax, results.json) up to a near-tie: logits agree to ~1e-6.
  flax_top1 = json.loads((workdir / 'results.json').read_text())['top1']
  assert report['flax_top1'] == flax_top1 and abs(report['float32']['top1'] - flax_top1) <= 0.011
  assert report['float32']['relative_error'] <= TOLERANCE and 'top-1' in stdout
  # BatchNorm folded, ReLU6 fused, the pool a SUM: nothing else, no TF (Flex) op.
  assert ops((out / export.FLOAT_TFLITE).read_bytes()) == {'CONV_2D': 14, 'DEPTHWISE_CONV_2D': 13,
                                                           'FULLY_CONNECTED': 1, 'SUM': 1}


def test_int8_export_runs_and_reports_its_accuracy(exported, tiny_data_dir):
  workdir, out, _ = exported
  model, variables, config = flax_reference(workdir)
  report = json.loads((out / export.REPORT).read_text())['int8']
  content = (out / export.INT8_TFLITE).read_bytes()
  runner = interpreter(content)
  assert runner.get_input_details()[0]['dtype'] == np.int8 and runner.get_output_details()[0]['dtype'] == np.int8
  assert len(content) < 0.5 * (out / export.FLOAT_TFLITE).stat().st_size  # int8 weights
  top1, count = eval_top1(runner, ml_collections.ConfigDict(config['data']), config['model']['resolution'])
  assert (report['top1'], report['eval_examples'], report['calibration_images']) == (top1, count, 64)
  # Quantised, not broken: close to the float model's logits on random images.
  resolution = config['model']['resolution']
  images = np.random.default_rng(8).uniform(-1, 1, (4, resolution, resolution, 3)).astype(np.float32)
  expected = np.asarray(model.apply(variables, images, train=False))
  assert relative_error(np.stack([invoke(runner, image) for image in images]), expected) < 0.1


def eval_split(data, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """The eval split's images in [-1, 1] and labels, as the pipeline reads them."""
  images, labels = [], []
  for batch in input_pipeline.eval_batches(data, global_batch_size=20, resolution=resolution, process_index=0,
                                           process_count=1):
    batch_images = batch['image'] if batch['image'].dtype != np.uint8 else input_pipeline.normalize(
        batch['image'].astype(np.float32))
    keep = batch['mask'] > 0
    images.append(batch_images[keep])
    labels.append(batch['label'][keep])
  return np.concatenate(images), np.concatenate(labels)


def eval_top1(runner, data, resolution: int) -> tuple[float, int]:
  """(top-1, images) on the eval split, one image at a time."""
  images, labels = eval_split(data, resolution)
  predictions = np.array([np.argmax(invoke(runner, image)) for image in images])
  return float(np.mean(predictions == labels)), len(labels)


def test_int8_accuracy_is_the_interpreters_image_by_image(reference_run):
  """Random convolutions and BatchNorm under a classifier fitted here (ridge regression of the eval labels on the
  pooled features): the float model scores 100% on the tiny eval split, so a broken int8 export shows in its
  top-1 (the reference run's, barely trained, predicts nearly one class whatever the input)."""
  workdir, _ = reference_run
  data = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text())['data'])
  model = MobileNetV1(alpha=0.25, num_classes=16)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  variables = randomize(shapes, seed=5)
  images, labels = eval_split(data, 40)
  _, state = model.apply(variables, images, train=False, capture_intermediates=True, mutable=['intermediates'])
  features = np.asarray(state['intermediates']['block13_pointwise_bn']['__call__'][0], np.float64).mean((1, 2))
  centred = np.c_[features - features.mean(0), np.ones(len(features))]
  fit = np.linalg.solve(centred.T @ centred + 0.1 * np.eye(centred.shape[1]), centred.T @ np.eye(16)[labels])
  variables['params']['classifier'] = {'kernel': fit[:-1].astype(np.float32),
                                       'bias': (fit[-1] - features.mean(0) @ fit[:-1]).astype(np.float32)}
  assert np.mean(np.argmax(model.apply(variables, images, train=False), -1) == labels) == 1.0
  converted = export.Converted({'alpha': 0.25, 'num_classes': 16}, variables, 40)
  content = converted.tflite_int8(export.calibration_images(data, 40, 32))
  reported = export.tflite_accuracy(content, data, 40)
  top1, count = eval_top1(interpreter(content), data, 40)
  assert (reported['top1'], reported['eval_examples']) == (top1, count) and top1 >= 0.9


def test_float_tflite_matches_flax_at_an_odd_resolution_with_random_batch_norm():
  model = MobileNetV1(alpha=0.5, num_classes=10)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  variables = randomize(shapes, seed=4)
  fields = {'alpha': 0.5, 'num_classes': 10}
  content = export.Converted(fields, variables, 45).tflite()
  images = np.random.default_rng(9).uniform(-1, 1, (2, 45, 45, 3)).astype(np.float32)
  expected = np.asarray(model.apply(variables, images, train=False))
  for threads in (1, 2):
    runner = interpreter(content, threads)
    assert relative_error(np.stack([invoke(runner, image) for image in images]), expected) <= TOLERANCE
  timing = export.measure_latency(content, 1, min_seconds=0.05, min_repeats=5)
  low, high = timing['latency_ms_spread']
  assert 0 < low <= timing['latency_ms'] <= high and timing['repeats'] >= 5


def test_a_converted_checkpoint_exports_at_the_resolution_given(tmp_path, capsys):
  from mnet_jax import convert

  model = MobileNetV1(alpha=0.25, num_classes=10)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  variables = randomize(shapes, seed=6)
  convert.save(convert.Imported(0.25, 10, variables, 'keras', 'random'), str(tmp_path / 'converted'))
  assert export.main([f'--workdir={tmp_path / "converted"}', f'--out={tmp_path / "out"}']) == 2
  assert 'pass --resolution' in capsys.readouterr().err and not (tmp_path / 'out').exists()
  assert export.main([f'--workdir={tmp_path / "converted"}', f'--out={tmp_path / "out"}', '--resolution=33',
                      '--formats=tflite']) == 0
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [export.REPORT, export.FLOAT_TFLITE]
  images = np.random.default_rng(10).uniform(-1, 1, (2, 33, 33, 3)).astype(np.float32)
  runner = interpreter(tmp_path / 'out' / export.FLOAT_TFLITE)
  expected = np.asarray(model.apply(variables, images, train=False))
  assert relative_error(np.stack([invoke(runner, image) for image in images]), expected) <= TOLERANCE


def bad_input_cases(reference_workdir, tmp_path):
  """(arguments, the error's words, the output dir that must not appear)."""
  no_checkpoint = tmp_path / 'no_checkpoint'
  (no_checkpoint / 'checkpoints').mkdir(parents=True)
  shutil.copy(reference_workdir / 'config.json', no_checkpoint / 'config.json')
  unknown_version = tmp_path / 'converted'
  unknown_version.mkdir()
  (unknown_version / 'model.json').write_text(json.dumps({'format': 99}))
  (tmp_path / 'a_file').write_text('')
  out = tmp_path / 'out'
  return [
      ([f'--workdir={no_checkpoint}', f'--out={out}'], 'without a checkpoint', out),
      ([f'--workdir={tmp_path / "nowhere"}', f'--out={out}'], 'no such directory', out),
      ([f'--workdir={tmp_path / "a_file"}', f'--out={out}'], 'no such directory', out),
      ([f'--workdir={unknown_version}', f'--out={out}'], 'format 99', out),
      ([f'--workdir={reference_workdir}', f'--out={out}', '--formats=tflite,onnx'], "unknown format 'onnx'", out),
      ([f'--workdir={reference_workdir}', f'--out={tmp_path / "a_file" / "out"}'], 'not a directory',
       tmp_path / 'a_file' / 'out'),
      ([f'--workdir={reference_workdir}', f'--out={tmp_path / "a_file"}'], 'not a directory', None),
  ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(reference_run, tmp_path, capsys):
  workdir, _ = reference_run
  for arguments, words, out in bad_input_cases(workdir, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert export.main(arguments) == 2, arguments
    err = capsys.readouterr().err
    assert err.startswith('error: ') and len(err.strip().splitlines()) == 1 and words in err, (arguments, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (out is None or not out.exists())


def test_a_failure_midway_leaves_no_output_and_no_temporary_files(reference_run, tmp_path, capsys):
  """The float model is written (into the temporary directory) before the int8 calibration finds no dataset."""
  workdir, _ = reference_run
  config = json.loads((workdir / 'config.json').read_text())
  config['data']['name'] = 'no_such_dataset'
  (tmp_path / 'elsewhere').mkdir()
  (tmp_path / 'elsewhere' / 'config.json').write_text(json.dumps(config))
  out = tmp_path / 'deploy' / 'out'
  (tmp_path / 'deploy').mkdir()
  assert export.main([f'--workdir={workdir}', f'--out={out}', '--formats=saved_model,tflite,int8',
                      f'--data_from={tmp_path / "elsewhere"}']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and len(err.strip().splitlines()) == 1 and 'no_such_dataset' in err, err
  assert list((tmp_path / 'deploy').iterdir()) == []


def test_the_command_line_reports_a_bad_run_dir_in_one_line(tmp_path):
  """The whole process's stderr (TensorFlow's and JAX's start-up included) is the one line."""
  (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'run' / 'config.json').write_text(json.dumps({'model': {'alpha': 0.25}}))
  result = subprocess.run([sys.executable, '-m', 'mnet_jax.export', f'--workdir={tmp_path / "run"}'],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stdout == ''
  assert len(result.stderr.strip().splitlines()) == 1 and 'without a checkpoint' in result.stderr, result.stderr
  assert not (tmp_path / 'run' / 'export').exists()
