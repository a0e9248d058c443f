"""Starting from trained weights (`config.init_from`): evaluation only, fine-tuning, and bad sources."""

from __future__ import annotations

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import flat, main_command, subprocess_env

from mnet_jax import train, warm_start
from mnet_jax.models import MobileNetV1


def test_evaluating_a_run_dir_without_training_gives_its_own_final_accuracy(reference_run, cache_dir, tmp_path):
  # 0 steps from the reference run's newest checkpoint: the evaluation must count exactly the hits the run's own
  # final evaluation counted (the same weights, BatchNorm statistics and eval batches).
  ref_workdir, overrides = reference_run
  result = subprocess.run(main_command(tmp_path, dict(overrides, num_train_steps=0, init_from=ref_workdir)),
                          env=subprocess_env(cache_dir), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert f'starting from the weights at step 24 of {ref_workdir}' in result.stdout
  expected = json.loads((ref_workdir / 'results.json').read_text())
  got = json.loads((tmp_path / 'results.json').read_text())
  assert (got['steps'], got['eval_examples']) == (0, expected['eval_examples'])
  assert (got['top1'], got['top5']) == (expected['top1'], expected['top5'])
  assert not list((tmp_path / 'checkpoints').glob('[0-9]*'))  # nothing trained, nothing saved


@pytest.mark.parametrize('change, message', [
    ({'model.alpha': 0.5}, 'params/stem/kernel is (3, 3, 3, 8), the model needs (3, 3, 3, 16)'),
    ({'init_from': '{tmp}/nothing'}, 'neither a converted checkpoint'),
])
def test_weights_that_do_not_fit_give_one_line_and_write_nothing(reference_run, cache_dir, tmp_path, change, message):
  ref_workdir, overrides = reference_run
  overrides = dict(overrides, num_train_steps=4, init_from=ref_workdir)
  overrides.update({k: str(v).format(tmp=tmp_path) for k, v in change.items()})
  result = subprocess.run(main_command(tmp_path / 'run', overrides), env=subprocess_env(cache_dir),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: init_from') and message in lines[0], result.stderr
  assert not (tmp_path / 'run').exists()


def _variables(model: MobileNetV1, seed: int) -> dict:
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
  # Statistics that differ from the initial ones, so that taking them is visible.
  return jax.tree.map(lambda x: x + 0.25, variables) if seed else variables


def test_fine_tuning_to_another_class_count_keeps_every_layer_but_the_classifier():
  source = _variables(MobileNetV1(alpha=0.25, num_classes=10), seed=1)
  model = MobileNetV1(alpha=0.25, num_classes=16)
  abstract = jax.eval_shape(lambda: _variables(model, 0))
  weights = warm_start.Weights(source['params'], source['batch_stats'], 'src', 'weights')
  with pytest.raises(warm_start.InitFromError, match='classifier/bias is \\(10,\\), the model needs \\(16,\\)'):
    warm_start.fit(weights, abstract, replace_classifier=False)  # evaluating: a mismatch is an error
  fitted, note = warm_start.fit(weights, abstract, replace_classifier=True)
  assert note == 'weights of src; classifier replaced (10 -> 16 classes, newly initialised)'

  tx = optax.sgd(0.1, momentum=0.9)
  fresh = train.init_state(model, tx, seed=3, use_ema=True)
  fresh = fresh.replace(opt_state=jax.tree.map(lambda x: x + 1.0, fresh.opt_state))  # a non-initial optimizer
  state = train.start_from(fresh, fitted.params, fitted.batch_stats, tx=tx, use_ema=True)
  got, imported, initial = flat(state.params), flat(source['params']), flat(fresh.params)
  for key in got:
    expected = initial[key] if key.startswith('classifier') else imported[key]
    np.testing.assert_array_equal(got[key], expected, err_msg=key)
  for key, value in flat(state.batch_stats).items():
    np.testing.assert_array_equal(value, flat(source['batch_stats'])[key], err_msg=key)
  assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state))  # momentum starts at zero again
  assert int(state.step) == 0
  for ema, value in ((state.ema_params, state.params), (state.ema_batch_stats, state.batch_stats)):
    jax.tree.map(np.testing.assert_array_equal, ema, value)
