"""metrics.jsonl: appended on local disks, bounded rewrites on gs://, and exact lines across a resume."""

import json
import os

import pytest

from mnet_jax import fileio, metric_writer
from mnet_jax.metric_writer import MetricWriter


def steps_in(path) -> list[int]:
  return [json.loads(line)['step'] for line in path.read_text().splitlines()]


def write_steps(workdir, steps, start_step: int = 0) -> None:
  writer = MetricWriter(str(workdir), True, start_step)
  for step in steps:
    writer.write(step, {'loss': 1.0 / step})
  writer.close()


def test_lines_are_appended_not_rewritten(tmp_path, monkeypatch):
  path = tmp_path / 'metrics.jsonl'
  writer = MetricWriter(str(tmp_path), True)
  writer.write(1, {'loss': 2.0})
  inode, first = os.stat(path).st_ino, path.read_bytes()
  rewrites = []
  monkeypatch.setattr(metric_writer, 'write_atomically', lambda *a: rewrites.append(a))
  for step in range(2, 101):
    writer.write(step, {'loss': 1.0 / step})
  writer.close()
  # An atomic rewrite replaces the file (a new inode); appending keeps it and its first bytes.
  assert rewrites == [] and os.stat(path).st_ino == inode and path.read_bytes().startswith(first)
  assert steps_in(path) == list(range(1, 101))


def test_a_resume_keeps_the_lines_up_to_its_step_then_the_new_ones(tmp_path):
  write_steps(tmp_path, range(10, 110, 10))  # the killed run logged past its last checkpoint, step 50
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 110, "lo')  # and was killed in the middle of an append
  write_steps(tmp_path, range(60, 130, 10), start_step=50)
  assert steps_in(tmp_path / 'metrics.jsonl') == list(range(10, 130, 10))


def test_a_resume_with_nothing_to_drop_rewrites_nothing(tmp_path, monkeypatch):
  write_steps(tmp_path, range(10, 60, 10))
  inode = os.stat(tmp_path / 'metrics.jsonl').st_ino
  write_steps(tmp_path, range(60, 80, 10), start_step=50)
  assert os.stat(tmp_path / 'metrics.jsonl').st_ino == inode
  assert steps_in(tmp_path / 'metrics.jsonl') == list(range(10, 80, 10))


@pytest.fixture
def remote(monkeypatch):
  """A local folder treated as gs:// (no appends); counts the bytes each object is rewritten with."""
  written = []
  real_write = fileio.write_atomically
  monkeypatch.setattr(metric_writer, 'is_remote', lambda path: True)

  def counted(path, data):
    written.append((os.path.basename(path), len(data)))
    real_write(path, data)
  monkeypatch.setattr(metric_writer, 'write_atomically', counted)
  return written


def test_on_gs_the_rewrites_are_bounded_and_no_line_is_lost(tmp_path, remote):
  lines = 1500  # a 150,000-step run logging every 100
  writer = MetricWriter(str(tmp_path), True)
  for step in range(1, lines + 1):
    writer.write(step, {'loss': 1.0})
    if step == 1234:  # as a kill would find them: metrics.jsonl then the tail hold every line so far
      text = (tmp_path / 'metrics.jsonl').read_text() + (tmp_path / 'metrics.jsonl.tail').read_text()
      assert [json.loads(line)['step'] for line in text.splitlines()] == list(range(1, 1235))
  writer.close()
  assert steps_in(tmp_path / 'metrics.jsonl') == list(range(1, lines + 1))
  assert not (tmp_path / 'metrics.jsonl.tail').exists()
  line_bytes = len((tmp_path / 'metrics.jsonl').read_bytes()) / lines
  full = sum(size for name, size in remote if name == 'metrics.jsonl')
  # Every line rewritten each time would be lines²/2 line-sizes (~1.1e6); bounded: ~lines²/(2 x 50) + the tails.
  assert full < lines * lines / metric_writer.REMOTE_LINES_PER_REWRITE * line_bytes
  assert sum(size for _, size in remote) < lines * lines / 20 * line_bytes


def test_on_gs_a_resume_keeps_the_lines_up_to_its_step_then_the_new_ones(tmp_path, remote):
  writer = MetricWriter(str(tmp_path), True)
  for step in range(1, 131):  # killed (no close) with lines both sealed and in the tail, past step 100
    writer.write(step, {'loss': 1.0})
  assert (tmp_path / 'metrics.jsonl.tail').exists()
  write_steps(tmp_path, range(101, 141), start_step=100)
  assert steps_in(tmp_path / 'metrics.jsonl') == list(range(1, 141))
