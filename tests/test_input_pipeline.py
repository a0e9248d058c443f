"""The input pipeline on the real tiny TFDS build and on a real folder of images."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mnet_jax import datasets, input_pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data(**overrides) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict(dict(
      name=datasets.TINY_DATASET, folder=None, data_dir=None, train_split='train', eval_split='test',
      min_area=0.35, aspect_range=(3 / 4, 4 / 3), flip=True, eval_crop=0.875, cache=True))
  data.update(overrides)
  return data


def _train(data, steps: int, **kwargs) -> list[dict[str, np.ndarray]]:
  batches = input_pipeline.train_batches(data, **{'global_batch_size': 32, 'resolution': 32, 'seed': 0, **kwargs})
  return [next(batches) for _ in range(steps)]


def test_train_batches_shapes_ranges_and_epochs(tiny_data_dir):
  data = _data(data_dir=tiny_data_dir)
  assert input_pipeline.dataset_info(data) == input_pipeline.DatasetInfo(16, 320, 100)
  batches = _train(data, 20, process_index=0, process_count=1)  # two epochs of 320
  for batch in batches:
    assert batch['image'].shape == (32, 32, 32, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
    assert -1 <= batch['image'].min() < -0.5 and 0.5 < batch['image'].max() <= 1
  # Each epoch is a permutation: the split has 20 images per class, so each class appears
  # exactly 20 times per epoch; and the second epoch is ordered differently.
  epochs = [np.concatenate([b['label'] for b in batches[e * 10:(e + 1) * 10]]) for e in range(2)]
  for labels in epochs:
    assert np.bincount(labels, minlength=16).tolist() == [20] * 16
  assert not np.array_equal(epochs[0], epochs[1])
  other_seed = _train(data, 1, seed=1, process_index=0, process_count=1)[0]
  assert not np.array_equal(other_seed['label'], batches[0]['label'])


def test_resuming_at_a_step_gives_the_uninterrupted_batches(tiny_data_dir):
  data = _data(data_dir=tiny_data_dir)
  uninterrupted = _train(data, 13, process_index=0, process_count=1)
  resumed = _train(data, 2, start_step=11, process_index=0, process_count=1)  # crosses the epoch boundary
  for expected, actual in zip(uninterrupted[11:], resumed, strict=True):
    np.testing.assert_array_equal(actual['image'], expected['image'])
    np.testing.assert_array_equal(actual['label'], expected['label'])


def test_two_processes_split_the_same_global_batches(tiny_data_dir):
  data = _data(data_dir=tiny_data_dir)
  single = _train(data, 3, start_step=9, process_index=0, process_count=1)
  halves = [_train(data, 3, start_step=9, process_index=p, process_count=2) for p in range(2)]
  for step, batch in enumerate(single):
    assert halves[0][step]['image'].shape[0] == 16
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])


def test_whole_image_crops_decode_the_split_once_with_the_same_batches(tiny_data_dir, monkeypatch):
  # min_area 1 (the offline study): every crop is the whole image, so the split is decoded and resized once
  # per resolution. The batches must be bitwise those of decoding every example at every step.
  data = _data(data_dir=tiny_data_dir, min_area=1.0)
  input_pipeline._PREPROCESSED.clear()
  input_pipeline._DECODED.clear()
  once = _train(data, 12, global_batch_size=48, process_index=0, process_count=1)  # step 6 spans 2 epochs
  # The decode-once path ran, with the split decoded to one array (its images share one shape) resized in batches.
  assert len(input_pipeline._PREPROCESSED) == 1 and len(input_pipeline._DECODED) == 1
  input_pipeline._PREPROCESSED.clear()
  monkeypatch.setattr(input_pipeline, '_decoded_in_memory', lambda *args: None)  # as for images of several sizes
  each_once = _train(data, 12, global_batch_size=48, process_index=0, process_count=1)
  monkeypatch.setattr(input_pipeline, '_PREPROCESSED_MAX_BYTES', 0)  # too large: decode per example
  per_example = _train(data, 12, global_batch_size=48, process_index=0, process_count=1)
  for a, b, c in zip(once, each_once, per_example, strict=True):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(a[key], c[key])
      np.testing.assert_array_equal(b[key], c[key])
  # The decoded-once path forms whole batches at a time: two processes still split each global batch.
  monkeypatch.undo()
  halves = [_train(data, 3, global_batch_size=48, start_step=5, process_index=p, process_count=2) for p in range(2)]
  for step, batch in enumerate(once[5:8]):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])
  # And the whole image is what training sees: unflipped, an epoch of the test split is its eval view at crop 1.
  data = _data(data_dir=tiny_data_dir, min_area=1.0, flip=False, train_split='test', eval_crop=1.0)
  train_images = np.concatenate([b['image'] for b in _train(data, 1, global_batch_size=100, process_index=0,
                                                                   process_count=1)])
  (eval_batch,) = input_pipeline.eval_batches(data, global_batch_size=100, resolution=32, process_index=0,
                                              process_count=1)
  key = lambda images: sorted(images.reshape(len(images), -1).tolist())  # noqa: E731
  assert key(train_images) == key(eval_batch['image'])


def test_eval_counts_every_example_once_across_processes(tiny_data_dir):
  # eval_crop 1 at the native 64 px is (up to resampling round-off) the decoded JPEG
  # itself, so each eval image can be matched to one image of the split as TFDS decodes it.
  data = _data(data_dir=tiny_data_dir, eval_crop=1.0)
  builder = tfds.builder(datasets.TINY_DATASET, data_dir=tiny_data_dir)
  expected = np.stack([e['image'] / 127.5 - 1 for e in builder.as_dataset(split='test').as_numpy_iterator()])
  matched, batch_counts = [], []
  for process in range(2):
    batches = list(input_pipeline.eval_batches(data, global_batch_size=32, resolution=64, process_index=process,
                                               process_count=2))
    batch_counts.append(len(batches))
    for batch in batches:
      assert batch['image'].shape == (16, 64, 64, 3) and set(np.unique(batch['mask'])) <= {0.0, 1.0}
      for image in batch['image'][batch['mask'] == 1]:
        distance = np.abs(expected - image).max(axis=(1, 2, 3))
        assert distance.min() < 0.05
        matched.append(int(distance.argmin()))
  assert batch_counts == [4, 4]  # ceil(100 / 32) on every process
  assert sorted(matched) == list(range(100))


def _write_image(path: str, color: tuple[int, int, int], size: tuple[int, int]) -> None:
  rng = np.random.default_rng(abs(hash(path)) % 2**32)
  pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
  Image.fromarray(pixels).save(path, quality=95)


def test_folder_of_images(tmp_path):
  colors = {'blue': (20, 40, 220), 'green': (30, 200, 40), 'red': (220, 30, 30)}
  counts = {'train': 4, 'test': 3}
  for split, count in counts.items():
    for label, color in colors.items():
      os.makedirs(tmp_path / split / label)
      for i in range(count):  # non-square, mixed formats
        _write_image(str(tmp_path / split / label / f'{i}.{"png" if i % 2 else "jpg"}'), color, (90 + 7 * i, 70))
  data = _data(name=input_pipeline.FOLDER, folder=str(tmp_path), cache=False)
  assert input_pipeline.dataset_info(data) == input_pipeline.DatasetInfo(3, 12, 9)
  batch = _train(data, 1, global_batch_size=6, resolution=48, process_index=0, process_count=1)[0]
  assert batch['image'].shape == (6, 48, 48, 3)
  batches = list(input_pipeline.eval_batches(data, global_batch_size=4, resolution=40, process_index=0,
                                             process_count=1))
  assert [b['mask'].sum() for b in batches] == [4, 4, 1]
  for batch in [*batches, _train(data, 1, global_batch_size=12, resolution=40, process_index=0, process_count=1)[0]]:
    mask = batch.get('mask', np.ones(len(batch['label'])))
    dominant_channel = batch['image'].mean(axis=(1, 2)).argmax(axis=-1)  # red 0, green 1, blue 2
    expected_channel = np.array([2, 1, 0])[batch['label']]  # labels are the sorted folder names
    assert np.all((dominant_channel == expected_channel) | (mask == 0))


def test_unprepared_and_unknown_datasets_raise_one_clear_line(tmp_path):
  data = _data(name='imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(input_pipeline.DatasetError) as error:
    input_pipeline.dataset_info(data)
  message = str(error.value)
  assert '\n' not in message and 'ILSVRC2012_img_train.tar' in message and str(tmp_path) in message
  with pytest.raises(input_pipeline.DatasetError, match='unknown TFDS dataset'):
    input_pipeline.dataset_info(_data(name='no_such_dataset_anywhere', data_dir=str(tmp_path)))
  os.makedirs(tmp_path / 'train' / 'a')
  with pytest.raises(input_pipeline.DatasetError, match='no .validation. subfolder'):
    input_pipeline.dataset_info(_data(name=input_pipeline.FOLDER, folder=str(tmp_path), eval_split='validation'))


def test_uncached_tfrecord_training_explains_itself(tiny_data_dir):
  with pytest.raises(input_pipeline.DatasetError, match='array_record'):
    _train(_data(data_dir=tiny_data_dir, cache=False), 1, process_index=0, process_count=1)


def test_uncached_array_record_build_trains_and_evaluates(array_record_dir):
  # The ImageNet preset's path (cache=False): training and evaluation both read the ArrayRecord build by index,
  # each process its own positions, and evaluation counts every example once.
  builder = tfds.builder(datasets.TINY_DATASET, data_dir=array_record_dir)
  data = _data(data_dir=array_record_dir, cache=False)
  assert _train(data, 1, process_index=0, process_count=1)[0]['image'].shape == (32, 32, 32, 3)
  labels = []
  for process in range(2):
    for batch in input_pipeline.eval_batches(data, global_batch_size=32, resolution=32, process_index=process,
                                             process_count=2):
      labels.extend(batch['label'][batch['mask'] == 1])
  expected = [e['label'] for e in builder.as_data_source(split='test')]
  assert sorted(labels) == sorted(expected) and len(labels) == 100


def test_the_reader_fetches_each_chunk_with_one_batched_read(array_record_dir, monkeypatch):
  # A pod host reads ~1,000 records a second per core: one Python call per record would cost a GIL-bound call
  # each; one batched read per chunk lets array_record read a chunk's files together.
  from array_record.python import array_record_data_source

  chunks = []
  source_class = array_record_data_source.ArrayRecordDataSource
  batched = source_class.__getitems__
  monkeypatch.setattr(source_class, '__getitems__', lambda self, keys: chunks.append(len(keys)) or batched(self, keys))
  monkeypatch.setattr(source_class, '__getitem__', lambda self, key: pytest.fail('a record read one at a time'))
  data = _data(data_dir=array_record_dir, cache=False)
  labels = [label for batch in input_pipeline.eval_batches(data, global_batch_size=32, resolution=32,
                                                           process_index=0, process_count=1)
            for label in batch['label'][batch['mask'] == 1]]
  assert len(labels) == 100 and chunks == [64, 64]  # 4 batches of 32 (the last one padded), 64 records a read


def test_data_source_batches_are_uint8_that_scale_to_the_in_memory_batches(array_record_dir):
  # Read through the data source, images cross to the devices as uint8 (a quarter of the bytes) and are scaled
  # there; the same crops read from memory arrive as float32 in [-1, 1]. Both must be the same images, up to
  # the rounding to whole pixel values (half a level: 0.5 / 127.5).
  import jax.numpy as jnp

  from mnet_jax.evaluation import model_input

  from_source, from_memory = _data(data_dir=array_record_dir, cache=False), _data(data_dir=array_record_dir)
  pairs = [(_train(from_source, 2, process_index=0, process_count=1)[1],
            _train(from_memory, 2, process_index=0, process_count=1)[1])]
  pairs += [tuple(next(input_pipeline.eval_batches(data, global_batch_size=32, resolution=40, process_index=1,
                                                   process_count=2)) for data in (from_source, from_memory))]
  for uint8, scaled in pairs:
    assert uint8['image'].dtype == np.uint8 and scaled['image'].dtype == np.float32
    np.testing.assert_array_equal(uint8['label'], scaled['label'])
    on_device = np.asarray(model_input(jnp.asarray(uint8['image'])))
    assert on_device.dtype == np.float32
    np.testing.assert_allclose(on_device, scaled['image'], rtol=0, atol=0.5 / 127.5 + 1e-6)
    assert np.mean(np.abs(on_device - scaled['image'])) > 1e-4  # the rounding happened: not the float path


# Reads 45 training batches of an ArrayRecord build by index, as the ImageNet preset does, then exits with the
# pipeline still prefetching: the reader calls into Python for every example.
READ_THEN_EXIT = """
import ast, sys
import ml_collections
from mnet_jax import input_pipeline
data = ml_collections.ConfigDict(ast.literal_eval(sys.argv[1]))
batches = input_pipeline.train_batches(data, global_batch_size=32, resolution=128, seed=0, process_index=0,
                                       process_count=1)
for _ in range(45):
  next(batches)
print('read', flush=True)
"""


def test_a_process_reading_an_array_record_build_exits_cleanly(array_record_dir):
  # Left to the interpreter's teardown, the reader's in-flight calls could no longer take the GIL: the process
  # aborted (exit 134) or hung, in 7 of 20 such runs on this machine (in none of 20 since the iterators are closed
  # at exit).
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for _ in range(5):  # 10 runs, 2 at a time (as many as the cores)
    data = repr(_data(data_dir=array_record_dir, cache=False).to_dict())
    runs = [subprocess.Popen([sys.executable, '-c', READ_THEN_EXIT, data], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for run in runs:
      try:
        output = run.communicate(timeout=90)[0]
      except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail('a process that had read its batches hung at exit')
      assert run.returncode == 0 and 'read' in output, output[-2000:]


def test_slim_evaluation_is_tf_slims_central_crop_and_bilinear_squash(tmp_path):
  # TF-slim's inception_preprocessing.preprocess_for_eval, written out with TF's own ops: to [0, 1], central_crop,
  # TF1 bilinear resize (align_corners=False), then to [-1, 1]. Non-square images whose crop starts fall on
  # fractions, so that a rounding or axis mix-up shows.
  import tensorflow as tf

  sizes = [(90, 70), (57, 101), (64, 64)]
  for split in ('train', 'test'):
    for i, size in enumerate(sizes):
      os.makedirs(tmp_path / split / f'c{i}')
      _write_image(str(tmp_path / split / f'c{i}' / '0.jpg'), (40 * i + 50, 120, 200 - 50 * i), size)
  data = _data(name=input_pipeline.FOLDER, folder=str(tmp_path), cache=False, eval_preprocess='slim')
  (batch,) = input_pipeline.eval_batches(data, global_batch_size=3, resolution=48, process_index=0, process_count=1)
  for image, label in zip(batch['image'], batch['label'], strict=True):
    encoded = tf.io.read_file(str(tmp_path / 'test' / f'c{label}' / '0.jpg'))
    expected = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
    expected = tf.image.central_crop(expected, central_fraction=0.875)
    expected = tf.compat.v1.image.resize_bilinear(expected[None], [48, 48], align_corners=False)[0]
    np.testing.assert_allclose(image, (expected.numpy() - 0.5) * 2.0, atol=2e-5)
  with pytest.raises(input_pipeline.DatasetError, match='eval_preprocess'):
    input_pipeline.eval_batches(_data(name=input_pipeline.FOLDER, folder=str(tmp_path), eval_preprocess='tf'),
                                global_batch_size=3, resolution=48, process_index=0, process_count=1)
