"""The GPU-box check script refuses, in one line and exit 2, a machine where JAX sees no GPU (as here); what it
measures on a GPU is recorded in BENCHMARKS.md whenever one is lent."""

import subprocess

from test_train import REPO, subprocess_env


def test_the_gpu_check_stops_in_one_line_without_a_gpu(tmp_path):
  result = subprocess.run(['bash', str(REPO / 'launch' / 'gpu_check.sh'), str(tmp_path / 'out')],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stdout.strip().splitlines() == [
      'error: JAX sees no GPU; install jax[cuda12] as README.md "A GPU box" says']
  assert not (tmp_path / 'out' / 'benchmark.txt').exists()  # nothing was timed
