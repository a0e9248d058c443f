"""Train and evaluate one MobileNet: mesh, train state, jitted steps, loop, Orbax checkpoints.

`train_and_evaluate(config, workdir)` is the whole job. The batch is sharded over every
device of every host on a 'data' mesh axis and the state is replicated, so one jitted
step is data-parallel and BatchNorm statistics are global by construction. Rerunning
the same command resumes from the newest checkpoint: the step is also the data
position, since the input pipeline is a pure function of (seed, step).
"""

from __future__ import annotations

import functools
import os
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mnet_jax import (
  architecture,
  checkpointing,
  compute,
  config_checks,
  cost,
  curves,
  evaluation,
  input_pipeline,
  optim,
  warm_start,
)
from mnet_jax.evaluation import eval_step, folded_weights, global_batch, model_input
from mnet_jax.fileio import atomic_write_json, is_remote, read_json, run_path
from mnet_jax.metric_writer import MetricWriter
from mnet_jax.models import MobileNetV1
from mnet_jax.preemption import Preempted, PreemptionFlag, any_process


class NonFiniteLossError(RuntimeError):
  """The loss or the gradient became NaN/inf."""


class ConfigMismatchError(ValueError):
  """The run directory holds a run of a different configuration."""


class TrainingError(RuntimeError):
  """A runtime failure (XLA, Gloo) after training started: some arrive as ValueError, which would otherwise
  read as bad input; in a multi-process run the message says a process may have died."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # {} when the EMA is off
  ema_batch_stats: Any  # the EMA of the moving BatchNorm statistics; {} when the EMA is off


def log(message: str) -> None:
  """Progress and results are printed by process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> MobileNetV1:
  return MobileNetV1(
      alpha=model_config.alpha, num_classes=num_classes, min_depth=model_config.min_depth,
      variant=model_config.variant, activation=model_config.activation,
      dropout_rate=model_config.dropout_rate, bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon, dtype=jnp.dtype(model_config.dtype),
      depthwise_impl=model_config.depthwise_impl, kernel_init=model_config.get('kernel_init', 'he_normal'),
      depth=model_config.get('depth', 1.0))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates the batch sharding through the model (no sharding-in-types rules).
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def init_state(model: MobileNetV1, tx: optax.GradientTransformation, seed: int | jax.Array,
               use_ema: bool) -> TrainState:
  # The variables do not depend on the input size, so one size serves every resolution: a sweep compiles
  # the initializer once per width (the persistent compilation cache has it for the other resolutions).
  size = architecture.MIN_RESOLUTION
  variables = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False)
  params = variables['params']
  batch_stats = variables['batch_stats']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params if use_ema else {},
                    ema_batch_stats=batch_stats if use_ema else {})


def start_from(state: TrainState, params: Any, batch_stats: Any, *, tx: optax.GradientTransformation,
               use_ema: bool) -> TrainState:
  """The fresh `state` with the given variables (`config.init_from`) and its optimizer started on them; a layer
  absent from `params` (a replaced classifier) keeps the state's own initialisation."""
  params, batch_stats = {**state.params, **params}, {**state.batch_stats, **batch_stats}
  return TrainState(step=state.step, params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                    ema_params=params if use_ema else {}, ema_batch_stats=batch_stats if use_ema else {})


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """The EMA's decay for the update after `step` updates: TF's ExponentialMovingAverage with num_updates
  (used by TF-slim's and the TPU reference's MobileNet training), min(decay, (1 + t) / (10 + t)), so that
  the average forgets the random init within the first few hundred steps."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def train_step(state: TrainState, batch: dict[str, jax.Array], seed: int | jax.Array, *, model: MobileNetV1,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               label_smoothing: float, ema_decay: float) -> tuple[TrainState, dict[str, jax.Array]]:
  """One data-parallel optimizer step; dropout randomness is a function of (seed, step).

  `seed` is a Python int for one run, or traced when seeds train together under `jax.vmap`.
  """
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, model_input(batch['image']), train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    return cross_entropy(logits, batch['label'], label_smoothing), (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
  if ema_decay:
    decay = ema_decay_at(state.step, ema_decay)
    average = lambda e, p: decay * e + (1 - decay) * p  # noqa: E731
    ema_params = jax.tree.map(average, ema_params, params)
    ema_batch_stats = jax.tree.map(average, ema_batch_stats, batch_stats)
  grad_norm = optax.tree.norm(grads)
  # A finite gradient times a huge rate can still overflow the parameters, which would then be checkpointed.
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
             'grad_norm': grad_norm, 'learning_rate': schedule(state.step),
             'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite}
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema_params=ema_params, ema_batch_stats=ema_batch_stats)
  # The state keeps the dtypes it was initialised with, the ones a checkpoint restores (with float64 compute under
  # jax_enable_x64, the rate and the batch statistics would otherwise promote the optimizer state and statistics).
  return jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state), metrics


def comparable_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as saved in the run dir, without fields that may change on resume."""
  saved = config.to_dict()
  for key in ('allow_config_change', 'log_every_steps', 'compilation_cache_dir', 'eval_at'):
    saved.pop(key, None)
  return saved


def check_saved_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Refuse to resume a run dir whose saved config differs (unless allowed)."""
  path = workdir / 'config.json'
  wanted = read_json_roundtrip(comparable_config(config))
  if path.exists() and not config.allow_config_change:
    saved = _upgraded(read_json(path))
    differing = sorted(_flat_diff(saved, wanted))
    if differing:
      raise ConfigMismatchError(
          f'{workdir} holds a run with a different config ({", ".join(differing)}); '
          'use another --workdir or pass --config.allow_config_change=True')
  if jax.process_index() == 0:
    atomic_write_json(path, wanted)


def _upgraded(saved: dict[str, Any]) -> dict[str, Any]:
  """A config saved by an earlier version, with the fields added since at their defaults and the retired ones
  dropped, so that the run resumes under this version."""
  saved.setdefault('init_from', '')
  saved.get('model', {}).setdefault('depth', 1.0)
  saved.get('data', {}).setdefault('train_examples', -1)
  saved.get('data', {}).pop('shuffle_buffer', None)  # never read: epochs are exact permutations
  return saved


def read_json_roundtrip(obj: Any) -> Any:
  """Normalize tuples to lists etc. as JSON would, so saved and new configs compare equal."""
  import json
  return json.loads(json.dumps(obj, default=str))


def _flat_diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in set(a) | set(b) for d in _flat_diff(a.get(k), b.get(k), f'{prefix}{k}.')]
  return [] if a == b else [prefix.rstrip('.')]


def prepared_dataset_info(data: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """Dataset facts; process 0 prepares an embedded dataset first so hosts sharing a disk do not race."""
  if jax.process_count() == 1:
    return input_pipeline.dataset_info(data)
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    input_pipeline.dataset_info(data)
  multihost_utils.sync_global_devices('dataset prepared')
  return input_pipeline.dataset_info(data)


def _check_workdir_creatable(workdir: epath.Path) -> None:
  """ValueError unless the workdir's nearest existing ancestor is a directory we may write (local paths)."""
  if is_remote(workdir):
    return
  existing = pathlib.Path(workdir)  # absolute: see `run_path`
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise ValueError(f'cannot write to workdir {workdir}: {existing} is not a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f'cannot write to workdir {workdir}: permission denied on {existing}')


def _make_workdir(workdir: epath.Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write_test.{jax.process_index()}'  # processes sharing a workdir must not race
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise ValueError(f'cannot write to workdir {workdir}: {e.strerror or e}') from None


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps) of a run; 0 steps evaluates the initial (e.g. imported) weights."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  if config.get('num_train_steps', -1) >= 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, max(1, int(config.num_epochs * steps_per_epoch))


def with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with another seed (the config itself when the seed is already its own)."""
  if config.seed == seed:
    return config
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.seed = seed
  return copy


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError naming the first mistake in a run's config that shows before any data or file is touched."""
  config_checks.check(config)  # sizes, ranges and names
  create_model(config.model, 1).check()  # the model's other fields (activation, initializer)
  if config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} is not a positive multiple of the '
                     f'{jax.device_count()} devices')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train one MobileNet per `config` in `workdir` (resuming if possible); return results.json's content.

  Bad configs raise ValueError before anything is written. A run that fails leaves
  `results.json` with status 'failed' and the error; its checkpoints stay as they were.
  """
  return train_seeds_together(config, [config.seed], [workdir])[0]


def train_seeds_together(config: ml_collections.ConfigDict, seeds: Sequence[int],
                         workdirs: Sequence[str]) -> list[dict[str, Any]]:
  """Train `config` once per seed, each in its own run dir, as one jitted step vmapped over the seeds.

  Small models are bound by per-step overhead, so K seeds together cost far less than K runs.
  Each run dir is an ordinary run (its config.json names its seed; it resumes alone too), and
  every seed sees the data and dropout it would see alone: the runs differ from separate ones
  only by the round-off of batched matrix products. One seed is exactly `train_and_evaluate`.
  """
  if len(seeds) != len(workdirs) or not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'expected distinct seeds, one per run dir; got seeds {list(seeds)} for {len(workdirs)} dirs')
  check_config(config)
  configs = [with_seed(config, seed) for seed in seeds]
  workdirs = [run_path(w) for w in workdirs]
  for workdir in workdirs:
    _check_workdir_creatable(workdir)  # before preparing a dataset for a run that cannot be written
  info = prepared_dataset_info(config.data)
  model = create_model(config.model, info.num_classes)
  initial = _initial_weights(config, model, info)
  for run_config, workdir in zip(configs, workdirs, strict=True):
    _make_workdir(workdir)
    check_saved_config(workdir, run_config)
  try:
    return _train(configs, workdirs, model, info, initial)
  except Preempted:
    raise
  except Exception as e:
    failure = _failure(e, workdirs[0])
    if jax.process_index() == 0:
      for run_config, workdir in zip(configs, workdirs, strict=True):
        try:
          atomic_write_json(workdir / 'results.json', {
              'status': 'failed', 'error': f'{type(failure).__name__}: {failure}', 'config': run_config.to_dict()})
        except OSError as write_error:  # e.g. the disk is full: the original error matters more
          log(f'[train] WARNING: could not mark the run failed in results.json: {write_error}')
    if failure is e:
      raise
    raise failure from e


def _initial_weights(config: ml_collections.ConfigDict, model: MobileNetV1,
                     info: input_pipeline.DatasetInfo) -> tuple[warm_start.Weights, str] | None:
  """`config.init_from`'s weights, checked against the model (InitFromError if they do not fit), and a note."""
  if not config.get('init_from'):
    return None
  size = architecture.MIN_RESOLUTION
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  fine_tuning = num_train_steps(config, info.num_train)[1] > 0
  return warm_start.fit(warm_start.load(config.init_from), abstract, replace_classifier=fine_tuning)


def _failure(error: Exception, workdir: epath.Path) -> Exception:
  """The error to report for a run that failed after it started: a full disk is said plainly."""
  disk_full = checkpointing.disk_full_error(error, workdir)
  if disk_full is not None:
    return disk_full
  # XLA's errors (ValueError for some status codes) and not a DatasetError or other ValueError subclass of ours.
  if type(error) is ValueError or isinstance(error, jax.errors.JaxRuntimeError):
    processes = jax.process_count()
    hint = f' (one of the {processes} processes may have died: see its log)' if processes > 1 else ''
    return TrainingError(f'{error}{hint}')
  return error


def stack_seeds(states: Sequence[Any]) -> Any:
  """Per-seed pytrees -> one pytree with a leading seed axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def seed_slice(stacked: Any, index: int) -> Any:
  """The `index`-th seed's pytree of a stacked one."""
  return jax.tree.map(lambda leaf: leaf[index], stacked)


class _Runs:
  """The jitted functions and per-seed plumbing of K runs that differ only in their seed.

  With K = 1 nothing is vmapped: the step is the program a single run always compiled.
  """

  def __init__(self, configs: list[ml_collections.ConfigDict], model: MobileNetV1, tx: Any,
               schedule: optax.Schedule, mesh: Mesh):
    config = configs[0]
    self.configs, self.seeds, self.count = configs, [c.seed for c in configs], len(configs)
    self.together = self.count > 1
    self.replicated = NamedSharding(mesh, P())
    self.eval_sharding = NamedSharding(mesh, P('data'))
    self.data_sharding = NamedSharding(mesh, P(None, 'data')) if self.together else self.eval_sharding
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                             label_smoothing=config.optim.label_smoothing, ema_decay=config.optim.ema_decay)
    evaluate_one = functools.partial(eval_step, model=model)
    fold = functools.partial(folded_weights, model=model)
    if self.together:
      seeds = jnp.asarray(self.seeds, jnp.int32)
      vmapped = jax.vmap(step)
      step_fn = lambda state, batch: vmapped(state, batch, seeds)  # noqa: E731
      evaluate_one = jax.vmap(evaluate_one, in_axes=(0, None))  # every seed sees the same eval batch
      fold = jax.vmap(fold)
    else:
      step_fn = functools.partial(step, seed=config.seed)
    self.step_fn = jax.jit(step_fn, in_shardings=(self.replicated, self.data_sharding),
                           out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_fn = jax.jit(evaluate_one, in_shardings=(self.replicated, self.eval_sharding),
                           out_shardings=self.replicated)
    self.fold_fn = jax.jit(fold, out_shardings=self.replicated)
    use_ema = bool(config.optim.ema_decay)
    self.start_from = jax.jit(functools.partial(start_from, tx=tx, use_ema=use_ema), out_shardings=self.replicated)
    # The seed is an argument, not a constant: one compilation initializes every seed.
    init = jax.jit(lambda seed: init_state(model, tx, seed, use_ema), out_shardings=self.replicated)
    self.init_fns = [functools.partial(init, seed) for seed in self.seeds]
    # Jitted: eagerly, every leaf was its own dispatch (1 s per point to stack, as much again to slice for saves).
    self._stack = jax.jit(stack_seeds, out_shardings=self.replicated)
    self._slice = jax.jit(seed_slice, out_shardings=self.replicated)

  def stack(self, states: list[TrainState]) -> TrainState:
    return self._stack(states) if self.together else states[0]

  def state_of(self, state: TrainState, index: int) -> TrainState:
    return self._slice(state, index) if self.together else state

  def value_of(self, metrics: dict[str, Any], index: int) -> dict[str, float]:
    return {k: float(np.asarray(v).reshape(self.count)[index]) for k, v in metrics.items()}

  def batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
    """Each seed's own training batches (order and augmentation follow its seed), stacked."""
    streams = [input_pipeline.train_batches(c.data, global_batch_size=c.batch_size, resolution=c.model.resolution,
                                            seed=c.seed, start_step=start_step) for c in self.configs]
    while True:
      local = [next(stream) for stream in streams]
      if self.together:
        local = [{k: np.stack([b[k] for b in local]) for k in local[0]}]
      yield global_batch(local[0], self.data_sharding)


def _train(configs: list[ml_collections.ConfigDict], workdirs: list[epath.Path], model: MobileNetV1,
           info: input_pipeline.DatasetInfo,
           initial: tuple[warm_start.Weights, str] | None) -> list[dict[str, Any]]:
  config = configs[0]
  resolution = config.model.resolution
  steps_per_epoch, total_steps = num_train_steps(config, info.num_train)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, steps_per_epoch, max(total_steps, 1))
  tx = optim.create_optimizer(config.optim, schedule)
  runs = _Runs(configs, model, tx, schedule, make_mesh())

  managers = [checkpointing.create_manager(w, config.max_checkpoints_to_keep) for w in workdirs]
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=runs.replicated),
                        jax.eval_shape(runs.init_fns[0]))
  states = checkpointing.restore_newest_common(managers, target, workdirs, log)
  if states is None:
    states = [f() for f in runs.init_fns]
    if initial is not None:  # only at the start: a resumed run continues from its own checkpoint
      weights, note = initial
      states = [runs.start_from(s, weights.params, weights.batch_stats) for s in states]
  start_step = int(jax.device_get(states[0].step))
  state = runs.stack(states)
  del states

  writers = [MetricWriter(str(w), jax.process_index() == 0, start_step) for w in workdirs]
  learning_curves = [curves.Curve(w, jax.process_index() == 0) for w in workdirs]
  for curve in learning_curves:  # steps past the restored one are trained, and evaluated, again
    curve.forget_after(start_step)
  eval_steps = set(curves.eval_steps(config.get('eval_at', ''), config.eval_every_steps, total_steps))
  model_cost = cost.model_cost(config.model.alpha, resolution, config.model.variant, info.num_classes,
                               config.model.min_depth, depth=config.model.get('depth', 1.0))
  seeds = f', seeds {",".join(map(str, runs.seeds))} together' if runs.together else ''
  depth = config.model.get('depth', 1.0)
  log(f'[train] MobileNet {config.model.alpha:g}-{resolution} ({config.model.variant}'
      f'{f", depth {depth:g}" if depth != 1 else ""}): '
      f'{model_cost.mult_adds / 1e6:.1f} M Mult-Adds, {model_cost.params / 1e6:.2f} M params; '
      f'{info.num_train} train / {info.num_eval} eval examples of {config.data.name}; '
      f'{total_steps} steps of {config.batch_size}{seeds} on {jax.device_count()} device(s), '
      f'{jax.process_count()} process(es)')
  if initial is not None and start_step == 0:
    log(f'[train] starting from the {initial[1]}')

  def save(step: int, force: bool = False) -> None:
    for index, (manager, workdir) in enumerate(zip(managers, workdirs, strict=True)):
      checkpointing.check_space(workdir, state_bytes // runs.count, step, any_process)
      manager.save(step, args=ocp.args.StandardSave(runs.state_of(state, index)), force=force)

  batches = runs.batches(start_step)
  t_start = time.time()
  timer = _Throughput(config.batch_size * runs.count, start_step)
  unchecked: list[tuple[int, jax.Array]] = []  # (step, finite flags) not yet read back from the device
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  step, first_step_s = start_step, 0.0
  try:
    with PreemptionFlag() as preemption:
      while step < total_steps:
        state, metrics = runs.step_fn(state, next(batches))
        step += 1
        unchecked.append((step, metrics['finite']))
        at_log = step % config.log_every_steps == 0 or step == total_steps
        at_checkpoint = step % config.checkpoint_every_steps == 0 or step == total_steps
        if at_log or at_checkpoint or step == start_step + 1:
          _check_finite(unchecked, runs.seeds)  # never checkpoint or report a diverged state
          timer.mark(step)
          first_step_s = first_step_s or time.time() - t_start  # compile, restore and the first batch
        if at_log:
          metrics = jax.device_get(metrics)
          img_s = timer.img_s()
          eta = (total_steps - step) * config.batch_size * runs.count / img_s if img_s else float('nan')
          log(f'[train] step {step}/{total_steps} ({100 * step / total_steps:.0f}%) '
              f'loss {_values(metrics["loss"], ".3f")} acc {_values(metrics["accuracy"], ".3f")} '
              f'lr {_values(metrics["learning_rate"], ".4f", first_only=True)} {img_s:.1f} img/s ETA {_duration(eta)}')
          for index, writer in enumerate(writers):
            values = runs.value_of({k: v for k, v in metrics.items() if k != 'finite'}, index)
            writer.write(step, values | {'img_s': img_s / runs.count})
        if step in eval_steps and step < total_steps:  # before the checkpoint of this step: see `curves`
          _check_finite(unchecked, runs.seeds)
          eval_metrics = evaluation.evaluate(config, state, runs, info.num_classes)
          log(f'[eval] step {step}: {evaluation.summary(eval_metrics)} on {eval_metrics[0]["eval_examples"]} '
              'examples')
          _record(step, eval_metrics, writers, learning_curves)
          timer.pause()  # eval time is not training time: the next interval starts now
          timer.mark(step)
        if at_checkpoint:
          save(step)
        # On several hosts the check is a collective (an allgather that blocks dispatch until every host's
        # step is done), so it runs at log and checkpoint steps only; one process checks its flag every step.
        if (at_log or at_checkpoint or jax.process_count() == 1) and any_process(bool(preemption.requested)):
          _check_finite(unchecked, runs.seeds)
          save(step, force=True)
          for manager in managers:
            manager.wait_until_finished()
          raise preemption.stop_error(step)
  except BaseException as e:
    # Not where another process may have died: the writes' barriers would wait on it.
    checkpointing.finish_saves(managers, wait=jax.process_count() == 1 or isinstance(e, NonFiniteLossError))
    raise

  eval_start = time.time()
  try:
    eval_metrics = evaluation.evaluate(config, state, runs, info.num_classes)
  except BaseException:
    checkpointing.finish_saves(managers, wait=jax.process_count() == 1)
    raise
  for manager in managers:  # the final checkpoint was written while evaluating (~1 s per point saved)
    manager.wait_until_finished()
  eval_s = time.time() - eval_start
  log(f'[eval] final: {evaluation.summary(eval_metrics)} on {eval_metrics[0]["eval_examples"]} examples')
  _record(step, eval_metrics, writers, learning_curves)
  wall_s = time.time() - t_start
  examples_seen = compute.examples_seen(total_steps, config.batch_size)
  all_results = []
  for run_config, workdir, writer, m in zip(configs, workdirs, writers, eval_metrics, strict=True):
    writer.close()
    results = {
        'alpha': config.model.alpha, 'resolution': resolution, 'rho': resolution / 224,
        'variant': config.model.variant, 'depth': config.model.get('depth', 1.0), 'dataset': config.data.name,
        'seed': run_config.seed, 'mult_adds': model_cost.mult_adds, 'params': model_cost.params,
        'batch_size': config.batch_size, 'num_train_steps': total_steps, 'examples_seen': examples_seen,
        'train_examples': info.num_train, 'train_flops': compute.train_flops(model_cost.mult_adds, examples_seen),
        'top1': m['top1'], 'top5': m['top5'], 'eval_loss': m['eval_loss'], 'eval_examples': m['eval_examples'],
        'steps': total_steps, 'train_img_s': timer.img_s() / runs.count or None, 'seeds_trained_together': runs.count,
        'wall_s': wall_s, 'first_step_s': first_step_s, 'steps_s': timer.seconds, 'eval_s': eval_s,
        'status': 'done', 'error': None, 'config': run_config.to_dict(),
    }
    if jax.process_index() == 0:
      atomic_write_json(workdir / 'results.json', results)
    all_results.append(results)
  return all_results


def _record(step: int, eval_metrics: list[dict[str, Any]], writers: list[MetricWriter],
            learning_curves: list[curves.Curve]) -> None:
  """One evaluation per seed into its TensorBoard scalars and its learning curve."""
  for writer, curve, metrics in zip(writers, learning_curves, eval_metrics, strict=True):
    writer.write(step, evaluation.scalars(metrics))
    curve.record(step, metrics)


def _values(values: Any, spec: str, first_only: bool = False) -> str:
  """One number, or the seeds' numbers joined by '/'."""
  values = np.atleast_1d(np.asarray(values))
  return '/'.join(format(float(v), spec) for v in (values[:1] if first_only else values))


def _check_finite(unchecked: list[tuple[int, jax.Array]], seeds: Sequence[int]) -> None:
  """Raise NonFiniteLossError naming the first diverged step (and seed); clears `unchecked`."""
  for step, finite in unchecked:
    finite = np.atleast_1d(np.asarray(jax.device_get(finite)))
    if not finite.all():
      which = f' (seed {seeds[int(np.argmin(finite))]})' if len(seeds) > 1 else ''
      raise NonFiniteLossError(f'non-finite loss, gradient or parameters at step {step}{which}; '
                               'the last good checkpoint is kept')
  unchecked.clear()


class _Throughput:
  """Training images per second, excluding the first step (compilation) and evaluation pauses."""

  def __init__(self, batch_size: int, step: int):
    self.batch_size, self.steps, self.seconds = batch_size, 0, 0.0
    self._mark: tuple[float, int] | None = None

  def mark(self, step: int) -> None:
    now = time.time()
    if self._mark is not None:
      self.steps += step - self._mark[1]
      self.seconds += now - self._mark[0]
    self._mark = (now, step)

  def pause(self) -> None:
    self._mark = None

  def img_s(self) -> float:
    return self.steps * self.batch_size / self.seconds if self.seconds else 0.0


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  minutes, seconds = divmod(int(seconds), 60)
  return f'{minutes}m{seconds:02d}s' if minutes < 60 else f'{minutes // 60}h{minutes % 60:02d}m'
