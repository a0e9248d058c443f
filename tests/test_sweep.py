"""The α×ρ sweep end to end: the smoke study on the tiny embedded dataset, then a rerun."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mnet_jax import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_point_names_round_trip():
  assert sweep.parse_point('a0.75_r128') == sweep.Point('separable', 0.75, 128)
  assert sweep.parse_point('conv_a1_r224').name == 'conv_a1_r224'
  with pytest.raises(ValueError, match='bad sweep point name'):
    sweep.parse_point('alpha1')


def run_smoke(workdir, data_dir):
  command = [sys.executable, '-m', 'mnet_jax.main', '--config=experiments/sweep.py:smoke', f'--workdir={workdir}',
             '--config.data.name=textured_shapes/tiny', f'--config.data.data_dir={data_dir}',
             '--config.sweep.alphas=0.25', '--config.sweep.resolutions=48,32', '--config.num_train_steps=10']
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_smoke_sweep_writes_table_and_figures_and_rerun_skips_finished_points(tiny_data_dir, tmp_path):
  first = run_smoke(tmp_path, tiny_data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  assert '[sweep] point 2/2' in first.stdout
  rows = list(csv.DictReader((tmp_path / 'results.csv').open()))
  assert [r['name'] for r in rows] == ['a0.25_r48', 'a0.25_r32']
  assert all(r['status'] == 'done' for r in rows)
  table = json.loads((tmp_path / 'results.json').read_text())
  rows = table['rows'] if isinstance(table, dict) else table
  for row in rows:
    # Mult-Adds of 0.25 MobileNet scale with the resolution squared (up to the classifier's fixed cost).
    assert row['latency_ms'] > 0 and row['infer_img_s'] > 0 and 0 <= row['top1'] <= 1
  assert rows[0]['mult_adds'] > 2 * rows[1]['mult_adds']
  for name in ('top1_vs_mult_adds', 'top1_vs_params', 'top1_vs_latency'):
    assert (tmp_path / f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (tmp_path / f'{name}.svg').exists()
  assert '0.25 MobileNet-48' in first.stdout  # the paper-style table

  second = run_smoke(tmp_path, tiny_data_dir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert '2 already done, 0 to run' in second.stdout
  assert '[train]' not in second.stdout
