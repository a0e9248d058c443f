"""A study's points from its grid and `sweep.axes`: names, overrides that reach each run's config, and every
mistake refused in one line before JAX starts."""

import re
import subprocess

import hooks
import ml_collections
import pytest
from test_train import REPO, main_command, subprocess_env

from mnet_jax import study
from mnet_jax.config_util import sibling

SWEEP_CONFIG = REPO / 'experiments' / 'sweep.py'


def sweep_config(preset: str = 'offline', **sweep_fields) -> ml_collections.ConfigDict:
  config = sibling(str(SWEEP_CONFIG), 'sweep').get_config(preset)
  for key, value in sweep_fields.items():
    config.sweep[key] = value
  return config


def test_the_default_study_keeps_its_points_and_run_dir_names():
  # The names existing workdirs hold, in the order the study has always run them.
  expected = [f'a{a}_r{r}' for a in ('1', '0.75', '0.5', '0.25') for r in (63, 54, 45, 36)]
  the_study = study.expand(sweep_config())
  assert [p.name for p in the_study.points] == expected
  assert the_study.columns == ['variant', 'alpha', 'resolution'] and not the_study.notes
  point = the_study.points[5]
  assert dict(point.overrides) == {'model.variant': 'separable', 'model.alpha': 0.75, 'model.resolution': 54}


def test_legacy_point_names_round_trip():
  assert study.legacy_point('a0.75_r128').name == 'a0.75_r128'
  assert study.legacy_point('conv_a1_r224').variant == 'conv'
  with pytest.raises(ValueError, match='bad sweep point name'):
    study.legacy_point('alpha1')


def test_an_axis_multiplies_the_grid_and_reaches_each_points_config():
  config = sweep_config(axes='num_train_steps=150,300;optim.learning_rate=0.004,0.016')
  the_study = study.expand(config)
  assert len(the_study.points) == 16 * 2 * 2
  assert the_study.columns == ['variant', 'alpha', 'resolution', 'num_train_steps', 'optim.learning_rate']
  point = next(p for p in the_study.points if p.name == 'a0.5_r45_steps300_lr0.016')
  run = study.point_config(config, point)
  assert (run.num_train_steps, run.optim.learning_rate, run.model.alpha, run.model.resolution) == (300, 0.016, 0.5, 45)
  assert 'sweep' not in run and config.num_train_steps == 300 and config.optim.learning_rate == 0.008
  assert point.columns() == {'variant': 'separable', 'alpha': 0.5, 'resolution': 45, 'num_train_steps': 300,
                             'optim.learning_rate': 0.016}
  assert point.to_json()['overrides']['optim.learning_rate'] == 0.016


def test_an_axis_on_a_grid_field_replaces_it_and_says_so():
  the_study = study.expand(sweep_config(axes='model.alpha=1,0.5;num_train_steps=150,300'))
  assert [p.name for p in the_study.points[:4]] == ['a1_r63_steps150', 'a1_r63_steps300', 'a0.5_r63_steps150',
                                                     'a0.5_r63_steps300']
  assert {p.alpha for p in the_study.points} == {1.0, 0.5}  # not sweep.alphas' 0.75 or 0.25
  assert the_study.notes == ['[sweep] sweep.axes sets model.alpha: it replaces sweep.alphas']


def test_zipped_axes_pair_their_values():
  config = sweep_config(axes='model.alpha=1,0.5,0.25;num_train_steps=150,300,600', zip_axes=True, resolutions='45')
  assert [p.name for p in study.expand(config).points] == ['a1_r45_steps150', 'a0.5_r45_steps300',
                                                           'a0.25_r45_steps600']


def test_a_list_of_dicts_gives_explicit_points():
  config = sweep_config(resolutions='45', alphas='1')
  with config.sweep.ignore_type():  # as a config file would set it
    config.sweep.axes = [{'model.depth': 0.5, 'batch_size': 32}, {'model.depth': 2, 'batch_size': 16}]
  points = study.expand(config).points
  assert [p.name for p in points] == ['a1_r45_d0.5_bs32', 'a1_r45_d2_bs16']
  assert study.point_config(config, points[1]).model.depth == 2.0  # typed like the field: a float


def test_two_points_that_would_share_a_run_dir_are_refused():
  config = sweep_config(axes='optim.learning_rate=0.1234567,0.1234568')
  with pytest.raises(ValueError, match="two sweep points would share the run dir 'a1_r63_lr0.123457'"):
    study.expand(config)


def test_every_point_name_is_distinct_in_a_many_axis_study():
  config = sweep_config(axes='num_train_steps=75,150;batch_size=32,64;model.depth=0.5,1;data.train_examples=500,-1')
  names = [p.name for p in study.expand(config).points]
  assert len(names) == len(set(names)) == 16 * 16


BAD_AXES = [
    ('sweep.seeds=1', 'sweep.axes: sweep.seeds cannot be swept'),
    ('seed=1,2', 'seed cannot be swept: seeds are their own axis'),
    ('checkpoint_every_steps=5,10', 'checkpoint_every_steps cannot be swept: it does not change what is trained'),
    ('model.alpah=1', "sweep.axes: unknown config field 'model.alpah'"),
    ('num_train_steps=0.5', "sweep.axes: num_train_steps takes int values, got '0.5'"),
    ('model.alpha=wide', "sweep.axes: model.alpha takes float values, got 'wide'"),
    ('num_train_steps=', 'sweep.axes: num_train_steps has no values'),
    ('num_train_steps=1;num_train_steps=2', 'num_train_steps given as two axes'),
    ('num_train_steps=150,150', 'num_train_steps lists 150 twice'),
    ('model.alpha=-1', 'sweep.axes: model.alpha=-1: width multiplier alpha must be a positive number'),
    ('optim.optimizer=adam', "sweep.axes: optim.optimizer=adam: unknown optimizer 'adam'"),
    ('data.aspect_range=1', 'data.aspect_range is not a number, string or bool field'),
    ('num_train_steps', 'expected FIELD=VALUE,VALUE,...'),
]


@pytest.mark.parametrize('axes, message', BAD_AXES)
def test_a_bad_axis_is_one_clear_error(axes, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    study.expand(sweep_config(axes=axes))


def test_zipped_axes_of_different_lengths_name_the_lengths():
  with pytest.raises(ValueError, match='got model.alpha 2, num_train_steps 3'):
    study.expand(sweep_config(axes='model.alpha=1,0.5;num_train_steps=1,2,3', zip_axes=True))


@pytest.mark.parametrize('axes, message', [BAD_AXES[1], BAD_AXES[3], BAD_AXES[4], BAD_AXES[6], BAD_AXES[9]])
def test_the_main_command_refuses_a_bad_axis_in_one_line_before_jax_and_writes_nothing(tmp_path, axes, message):
  env = hooks.without_jax_or_tensorflow(subprocess_env(), tmp_path / 'blocked', REPO)
  workdir = tmp_path / 'study'
  command = main_command(workdir, {}, f'--config.sweep.axes={axes}', config_file=SWEEP_CONFIG, preset='smoke')
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()
