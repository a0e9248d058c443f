"""The benchmark's command line: table, JSON rows, rounds and bad input."""

import json
import subprocess
import sys

from test_train import subprocess_env

from mnet_jax import benchmark


def test_tiny_benchmark_prints_the_table_and_writes_json_rows(tmp_path, cache_dir):
  out = tmp_path / 'bench.json'
  # The timing itself is not under test: the other subprocess tests' environment (programs compiled without LLVM's
  # optimisations; cold: 37.7 -> 27.5 s here), and the second round reuses the first's compiled programs.
  env = {**subprocess_env(), 'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  proc = subprocess.run([sys.executable, '-m', 'mnet_jax.benchmark', '--alpha', '0.25', '--resolution', '32',
                         '--batch', '2', '--steps', '1', '--repeats', '2', '--rounds', '2', '--peers', 'none',
                         '--no_pipeline', '--json', str(out)], capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| mnet_jax | float32, depthwise=auto |' in proc.stdout
  assert 'round 2/2' in proc.stderr
  report = json.loads(out.read_text())
  (result,) = report['results']
  (row,) = result['rows']
  assert row['framework'] == 'mnet_jax' and row['rounds'] == 2
  for key in ('train_img_s', 'infer_img_s', 'latency_ms', 'compile_s'):
    assert row[key] > 0, key
  assert row['train_spread'][0] <= row['train_img_s'] <= row['train_spread'][1]
  assert report['config']['rounds'] == 2 and 'cpus' in report['machine']


def test_bad_arguments_exit_2_with_one_line():
  proc = subprocess.run([sys.executable, '-m', 'mnet_jax.benchmark', '--rounds', '0'], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ['error: --batch, --steps, --repeats and --rounds must be positive']


def test_rounds_merge_to_the_median_and_the_widest_spread():
  rounds = [{'train_img_s': rate, 'train_spread': [rate - 1, rate + 1], 'infer_img_s': 10.0, 'infer_spread': [9, 11],
             'latency_ms': 2.0, 'latency_spread': [1.5, 2.5], 'compile_s': compile_s, 'variant': 'v'}
            for rate, compile_s in ((20.0, 3.0), (30.0, 1.0), (25.0, 2.0))]
  merged = benchmark.merge_rounds([*rounds, {'note': 'failed (exit 1): boom'}])
  assert merged['train_img_s'] == 25.0 and merged['train_spread'] == [19.0, 31.0]
  assert merged['compile_s'] == 2.0 and merged['rounds'] == 3
  assert benchmark.merge_rounds([{'note': 'skipped: no torch'}]) == {'note': 'skipped: no torch'}
