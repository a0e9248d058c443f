"""The recipe as the code holds it: evaluation of the EMA weights and statistics (against an independent evaluation
of the checkpoint's), and README's ImageNet recipe table against `experiments/default.py:imagenet2012`."""

import json
import re
import subprocess
from fractions import Fraction

import jax
import numpy as np
from test_evaluation import evaluate_unfolded
from test_train import DEFAULT_CONFIG, REPO, checkpoint_state, main_command, make_config, subprocess_env, tiny_overrides

from mnet_jax import models
from mnet_jax.config_util import sibling


def test_evaluation_uses_the_ema_weights_and_the_ema_batchnorm_statistics(tiny_data_dir, cache_dir, tmp_path):
  overrides = tiny_overrides(tiny_data_dir, compilation_cache_dir=str(cache_dir), **{'optim.ema_decay': 0.99})
  subprocess.run(main_command(tmp_path, overrides), check=True, env=subprocess_env(), timeout=300)
  config = make_config(overrides)
  state = checkpoint_state(tmp_path)
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['steps'] == int(state['step'])
  ema_top1, ema_loss, _ = evaluate_unfolded(config, state['ema_params'], state['ema_batch_stats'])
  assert abs(results['eval_loss'] - ema_loss) < 1e-4  # float32 sums against float64
  assert abs(results['top1'] - ema_top1) <= 1 / results['eval_examples']  # folded weights may flip one near-tie
  # The test can fail: raw weights, raw statistics, or either mixed with the EMA's give another loss.
  for params, batch_stats in (('params', 'batch_stats'), ('ema_params', 'batch_stats'),
                              ('params', 'ema_batch_stats')):
    _, loss, _ = evaluate_unfolded(config, state[params], state[batch_stats])
    assert abs(loss - ema_loss) > 1e-3, (params, batch_stats, loss, ema_loss)  # measured: 0.04 and more


def recipe_table_cells() -> dict[str, str]:
  """(the 'here' cell, the 'why here' cell) of README's ImageNet recipe table, by row."""
  readme = (REPO / 'README.md').read_text()
  section = readme.split('## The paper-scale study on ImageNet', 1)[1].split('\n## ', 1)[0]
  rows = [line for line in section.splitlines() if line.startswith('| ')]
  assert rows and rows[0].startswith('| | here |'), 'the recipe table is gone from the ImageNet section'
  return {cells[1].strip(): (cells[2].strip(), cells[-2].strip()) for cells in (row.split('|') for row in rows[1:])}


def fraction(x: float) -> str:
  return str(Fraction(x).limit_denominator(10))


def rendered_recipe(config) -> dict[str, str]:
  """The 'here' cells as the preset states them: every number comes from `config`, every choice is looked up."""
  model, data, optim = config.model, config.data, config.optim
  batch, lr = config.batch_size, optim.learning_rate
  warmup = 'no warm-up' if optim.warmup_epochs == 0 else f'{optim.warmup_epochs:g} warm-up epochs'
  weight_decay = f'{optim.weight_decay:.0e}'.replace('e-0', 'e-')
  aspect = '[{}, {}]'.format(*map(fraction, data.aspect_range))
  return {
      'optimizer': f'{ {"rmsprop": "RMSprop"}[optim.optimizer]}: decay {optim.rmsprop_decay:g}, momentum '
                   f'{optim.momentum:g}, ε {optim.epsilon:g} (in the root), mean square from '
                   f'{optim.rmsprop_initial_scale:g}',
      'batch': f'{batch:,}',
      'learning rate': f'{lr:g} per {optim.base_batch_size} ({lr * batch / optim.base_batch_size:g} at {batch:,})',
      'schedule': f'× {optim.decay_rate:g} every {optim.decay_epochs:g} epochs, '
                  f'{ {"exponential": "staircase"}[optim.schedule]}, {warmup}',
      'epochs': f'{config.num_epochs:g}',
      'label smoothing': f'{optim.label_smoothing:g}',
      'weight EMA': f"{optim.ema_decay:g}, with TF's num_updates warm-up min(d, (1+t)/(10+t)), over weights and "
                    'BatchNorm statistics; evaluation uses it',
      'weight decay': f'L2 {weight_decay} on convolution and classifier kernels, none on depthwise',
      'initialisation': {'slim': 'truncated normal, std 0.09', 'he_normal': 'He normal'}[model.kernel_init],
      'BatchNorm': f'decay {model.bn_momentum:g}, ε {model.bn_epsilon:g}',
      'dropout': f'keep {1 - model.dropout_rate:g}',
      'training crops': f'area [{data.min_area:g}, 1], aspect {aspect}, {"flip" if data.flip else "no flip"}, '
                        'no colour distortion',
      'evaluation': f'central {data.eval_preprocess}, {data.eval_crop:g} of the shorter side, antialiased bilinear '
                    f"to {model.resolution}; `--config.data.eval_preprocess=slim` gives TF-slim's exactly "
                    '(tested against its ops)',
      'classes': {'imagenet2012': '1,000 (TFDS labels)'}[data.name],
      'compute dtype': f'{model.dtype}, float32 parameters and statistics',
  }


def test_the_readme_recipe_table_states_the_imagenet_preset():
  config = sibling(str(DEFAULT_CONFIG), 'default').get_config('imagenet2012')
  cells = recipe_table_cells()
  assert {row: here for row, (here, _) in cells.items()} == rendered_recipe(config)
  decays = config.num_epochs / config.optim.decay_epochs
  end = config.optim.decay_rate ** decays
  assert cells['epochs'][1] == f'{decays:g} decays: the rate ends at {end:.0%} of its start'


def test_the_recipe_table_check_fails_when_the_preset_changes():
  config = sibling(str(DEFAULT_CONFIG), 'default').get_config('imagenet2012')
  for key, value in (('model.kernel_init', 'he_normal'), ('optim.ema_decay', 0.999), ('batch_size', 4096),
                     ('data.min_area', 0.08), ('optim.weight_decay', 1e-4)):
    changed = sibling(str(DEFAULT_CONFIG), 'default').get_config('imagenet2012')
    node, *path = key.split('.')
    if path:
      changed[node][path[0]] = value
    else:
      changed[node] = value
    assert rendered_recipe(changed) != rendered_recipe(config), key


def test_slim_initialisation_is_a_normal_of_the_tables_std_cut_at_two_std():
  std = 0.09
  init = models.KERNEL_INITS['slim'][0]
  samples = np.asarray(init(jax.random.key(0), (200_000,)))
  assert np.abs(samples).max() <= 2 * std + 1e-6
  # A normal cut at ±2σ keeps 0.8796σ as its standard deviation.
  assert abs(samples.std() - 0.8796 * std) < 0.005 * std
  assert re.search(rf'truncated normal, std {std:g}', recipe_table_cells()['initialisation'][0])
