"""Train and evaluate one MobileNet: mesh, train state, jitted steps, loop, Orbax checkpoints.

`train_and_evaluate(config, workdir)` is the whole job. The batch is sharded over every
device of every host on a 'data' mesh axis and the state is replicated, so one jitted
step is data-parallel and BatchNorm statistics are global by construction. Rerunning
the same command resumes from the newest checkpoint: the step is also the data
position, since the input pipeline is a pure function of (seed, step).
"""

from __future__ import annotations

import errno
import functools
import os
import pathlib
import shutil
import signal
import time
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

from mnet_jax import architecture, cost, input_pipeline, optim
from mnet_jax.fileio import atomic_write_json, is_remote, read_json, run_path
from mnet_jax.metric_writer import MetricWriter
from mnet_jax.models import MobileNetV1


class NonFiniteLossError(RuntimeError):
  """The loss or the gradient became NaN/inf."""


class ConfigMismatchError(ValueError):
  """The run directory holds a run of a different configuration."""


class DiskFullError(OSError):
  """The workdir's disk (or quota) is full: the user's to fix, like bad input (exit code 2)."""


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
      depthwise_impl=model_config.depthwise_impl)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates the batch sharding through the model (no sharding-in-types rules).
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def init_state(model: MobileNetV1, tx: optax.GradientTransformation, resolution: int,
               seed: int, use_ema: bool) -> TrainState:
  variables = model.init(jax.random.key(seed), jnp.zeros((1, resolution, resolution, 3)), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params), ema_params=params if use_ema else {})


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: MobileNetV1,
               tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
               label_smoothing: float, ema_decay: float) -> tuple[TrainState, dict[str, jax.Array]]:
  """One data-parallel optimizer step; dropout randomness is a function of (seed, step)."""
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    return cross_entropy(logits, batch['label'], label_smoothing), (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay:
    ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema_params, params)
  grad_norm = optax.tree.norm(grads)
  # A finite gradient times a huge rate can still overflow the parameters, which would then be checkpointed.
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
             'grad_norm': grad_norm, 'learning_rate': schedule(state.step),
             'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite}
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema_params=ema_params)
  return new_state, metrics


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *,
              model: MobileNetV1) -> dict[str, jax.Array]:
  """Masked sums of top-1/top-5 hits over one (padded) eval batch."""
  logits = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'], train=False)
  top5 = jax.lax.top_k(logits, 5)[1]
  hits = top5 == batch['label'][:, None]
  mask = batch['mask']
  return {'top1': jnp.sum(hits[:, 0] * mask), 'top5': jnp.sum(jnp.any(hits, -1) * mask),
          'count': jnp.sum(mask)}


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of the batch -> one array sharded over all devices of all hosts."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def evaluate(config: ml_collections.ConfigDict, state: TrainState, eval_fn, sharding) -> dict[str, float]:
  params = state.ema_params if config.optim.ema_decay else state.params
  totals = {'top1': 0.0, 'top5': 0.0, 'count': 0.0}
  for batch in input_pipeline.eval_batches(config.data, global_batch_size=config.batch_size,
                                           resolution=config.model.resolution):
    sums = jax.device_get(eval_fn(params, state.batch_stats, global_batch(batch, sharding)))
    for k in totals:
      totals[k] += float(sums[k])
  count = max(totals['count'], 1.0)
  return {'top1': totals['top1'] / count, 'top5': totals['top5'] / count, 'eval_examples': int(totals['count'])}


def comparable_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as saved in the run dir, without fields that may change on resume."""
  saved = config.to_dict()
  for key in ('allow_config_change', 'log_every_steps', 'compilation_cache_dir'):
    saved.pop(key, None)
  return saved


def check_saved_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Refuse to resume a run dir whose saved config differs (unless allowed)."""
  path = workdir / 'config.json'
  wanted = read_json_roundtrip(comparable_config(config))
  if path.exists() and not config.allow_config_change:
    saved = read_json(path)
    differing = sorted(_flat_diff(saved, wanted))
    if differing:
      raise ConfigMismatchError(
          f'{workdir} holds a run with a different config ({", ".join(differing)}); '
          'use another --workdir or pass --config.allow_config_change=True')
  if jax.process_index() == 0:
    atomic_write_json(path, wanted)


def read_json_roundtrip(obj: Any) -> Any:
  """Normalize tuples to lists etc. as JSON would, so saved and new configs compare equal."""
  import json
  return json.loads(json.dumps(obj, default=str))


def _flat_diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in set(a) | set(b) for d in _flat_diff(a.get(k), b.get(k), f'{prefix}{k}.')]
  return [] if a == b else [prefix.rstrip('.')]


class _Preemption:
  """Turns SIGTERM (what a preempted TPU VM gets) into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


class Preempted(Exception):
  """Raised after a checkpoint was saved in response to SIGTERM."""


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (all hosts must stop at the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


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
  """(steps per epoch, total steps) of a run."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  if config.get('num_train_steps', -1) > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, max(1, int(config.num_epochs * steps_per_epoch))


def restore_newest_good(checkpoints: ocp.CheckpointManager, target: Any, workdir: epath.Path) -> Any:
  """The newest checkpoint that restores and is finite; damaged ones are moved aside with a warning."""
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      state = checkpoints.restore(step, args=ocp.args.StandardRestore(target))
      if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params)):
        raise ValueError('non-finite parameters')
      log(f'[train] resumed from checkpoint at step {step} in {workdir}')
      return state
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
      log(f'[train] WARNING: skipping damaged checkpoint at step {step} ({type(e).__name__}: {e}); '
          f'moved to {workdir / "damaged_checkpoints"}')
      if jax.process_index() == 0:
        (workdir / 'damaged_checkpoints').mkdir(exist_ok=True)
        (workdir / 'checkpoints' / str(step)).rename(workdir / 'damaged_checkpoints' / f'{step}-{int(time.time())}')
      checkpoints.reload()
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train one MobileNet per `config` in `workdir` (resuming if possible); return results.json's content.

  Bad configs raise ValueError before anything is written. A run that fails leaves
  `results.json` with status 'failed' and the error; its checkpoints stay as they were.
  """
  create_model(config.model, 1).check()
  architecture.check_resolution(config.model.resolution)
  # An unknown optimizer or schedule is bad input too: say so before the workdir is written.
  optim.create_optimizer(config.optim, {}, optim.learning_rate_schedule(config.optim, 1, 1, 1))
  if config.batch_size < 1 or config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} is not a positive multiple of the '
                     f'{jax.device_count()} devices')
  workdir = run_path(workdir)
  _check_workdir_creatable(workdir)  # before preparing a dataset for a run that cannot be written
  info = prepared_dataset_info(config.data)
  model = create_model(config.model, info.num_classes)
  _make_workdir(workdir)
  check_saved_config(workdir, config)
  try:
    return _train(config, workdir, model, info)
  except Preempted:
    raise
  except Exception as e:
    failure = _failure(e, workdir)
    if jax.process_index() == 0:
      try:
        atomic_write_json(workdir / 'results.json', {
            'status': 'failed', 'error': f'{type(failure).__name__}: {failure}', 'config': config.to_dict()})
      except OSError as write_error:  # e.g. the disk is full: the original error matters more
        log(f'[train] WARNING: could not mark the run failed in results.json: {write_error}')
    if failure is e:
      raise
    raise failure from e


_DISK_FULL = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))


def _kept_checkpoint(workdir: epath.Path) -> str:
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').glob('*') if p.name.isdigit())
  return f'the checkpoint at step {steps[-1]} is intact' if steps else 'no checkpoint was written yet'


def _check_space(workdir: epath.Path, needed: int, step: int) -> None:
  """Refuse to start a checkpoint the local disk cannot hold.

  A write cut off by ENOSPC is still caught (see `_failure`), but Orbax and TensorStore then
  print dozens of tracebacks from their writer threads.
  """
  needed = int(1.1 * needed) + 2**20  # the state plus metadata
  free = None if is_remote(workdir) else shutil.disk_usage(workdir / 'checkpoints').free
  if any_process(free is not None and free < needed):
    raise DiskFullError(f'no space left in {workdir} for the checkpoint at step {step} (it needs '
                        f'~{needed / 1e6:.1f} MB, {(free or 0) / 1e6:.1f} MB free); {_kept_checkpoint(workdir)}. '
                        'Free some space and rerun the same command to resume')


def _failure(error: Exception, workdir: epath.Path) -> Exception:
  """The error to report for a run that failed after it started: a full disk is said plainly."""
  if isinstance(error, DiskFullError):
    return error
  causes = [error]
  while len(causes) < 10 and (causes[-1].__cause__ or causes[-1].__context__) is not None:
    causes.append(causes[-1].__cause__ or causes[-1].__context__)
  for cause in causes:
    # TensorStore (Orbax's writer) reports OS errors as ValueError with the strerror in the text.
    reason = next((r for r in _DISK_FULL if r in str(cause) or getattr(cause, 'strerror', None) == r), None)
    if reason:
      return DiskFullError(f'cannot write to {workdir}: {reason.lower()}; {_kept_checkpoint(workdir)}. '
                           'Free some space and rerun the same command to resume')
  # XLA's errors (ValueError for some status codes) and not a DatasetError or other ValueError subclass of ours.
  if type(error) is ValueError or isinstance(error, jax.errors.JaxRuntimeError):
    processes = jax.process_count()
    hint = f' (one of the {processes} processes may have died: see its log)' if processes > 1 else ''
    return TrainingError(f'{error}{hint}')
  return error


def _train(config: ml_collections.ConfigDict, workdir: epath.Path, model: MobileNetV1,
           info: input_pipeline.DatasetInfo) -> dict[str, Any]:
  resolution = config.model.resolution
  steps_per_epoch, total_steps = num_train_steps(config, info.num_train)
  schedule = optim.learning_rate_schedule(config.optim, config.batch_size, steps_per_epoch, total_steps)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P('data'))
  abstract = jax.eval_shape(lambda: init_state(model, optax.identity(), resolution, config.seed, False))
  tx = optim.create_optimizer(config.optim, abstract.params, schedule)
  init_fn = jax.jit(functools.partial(init_state, model, tx, resolution, config.seed,
                                      bool(config.optim.ema_decay)), out_shardings=replicated)

  checkpoints = ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep, create=True,
                                           cleanup_tmp_directories=True))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                        jax.eval_shape(init_fn))
  state = restore_newest_good(checkpoints, target, workdir)
  if state is None:
    state = init_fn()
  start_step = int(jax.device_get(state.step))

  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, seed=config.seed,
                        label_smoothing=config.optim.label_smoothing, ema_decay=config.optim.ema_decay),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model),
                    in_shardings=(replicated, replicated, data_sharding), out_shardings=replicated)

  writer = MetricWriter(str(workdir), jax.process_index() == 0, start_step)
  model_cost = cost.model_cost(config.model.alpha, resolution, config.model.variant, info.num_classes,
                               config.model.min_depth)
  log(f'[train] MobileNet {config.model.alpha:g}-{resolution} ({config.model.variant}): '
      f'{model_cost.mult_adds / 1e6:.1f} M Mult-Adds, {model_cost.params / 1e6:.2f} M params; '
      f'{info.num_train} train / {info.num_eval} eval examples of {config.data.name}; '
      f'{total_steps} steps of {config.batch_size} on {jax.device_count()} device(s), '
      f'{jax.process_count()} process(es)')

  batches = input_pipeline.train_batches(
      config.data, global_batch_size=config.batch_size, resolution=resolution, seed=config.seed,
      start_step=start_step)
  t_start = time.time()
  timer = _Throughput(config.batch_size, start_step)
  unchecked: list[tuple[int, jax.Array]] = []  # (step, finite flag) not yet read back from the device
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  step = start_step
  try:
    with _Preemption() as preemption:
      while step < total_steps:
        state, metrics = step_fn(state, global_batch(next(batches), data_sharding))
        step += 1
        unchecked.append((step, metrics['finite']))
        at_log = step % config.log_every_steps == 0 or step == total_steps
        at_checkpoint = step % config.checkpoint_every_steps == 0 or step == total_steps
        if at_log or at_checkpoint or step == start_step + 1:
          _check_finite(unchecked)  # never checkpoint or report a diverged state
          timer.mark(step)
        if at_log:
          metrics = jax.device_get(metrics)
          img_s = timer.img_s()
          eta = (total_steps - step) * config.batch_size / img_s if img_s else float('nan')
          log(f'[train] step {step}/{total_steps} ({100 * step / total_steps:.0f}%) '
              f'loss {metrics["loss"]:.3f} acc {metrics["accuracy"]:.3f} '
              f'lr {metrics["learning_rate"]:.4f} {img_s:.1f} img/s ETA {_duration(eta)}')
          writer.write(step, {k: v for k, v in metrics.items() if k != 'finite'} | {'img_s': img_s})
        if config.eval_every_steps and step % config.eval_every_steps == 0 and step < total_steps:
          eval_metrics = evaluate(config, state, eval_fn, data_sharding)
          log(f'[eval] step {step}: top-1 {eval_metrics["top1"]:.4f} top-5 {eval_metrics["top5"]:.4f}')
          writer.write(step, {'eval_top1': eval_metrics['top1'], 'eval_top5': eval_metrics['top5']})
          timer.pause()  # eval time is not training time
        if at_checkpoint:
          _check_space(workdir, state_bytes, step)
          checkpoints.save(step, args=ocp.args.StandardSave(state))
        if any_process(preemption.requested):
          _check_finite(unchecked)
          _check_space(workdir, state_bytes, step)
          checkpoints.save(step, args=ocp.args.StandardSave(state), force=True)
          checkpoints.wait_until_finished()
          raise Preempted(f'SIGTERM received: checkpoint saved at step {step}; rerun the same command to resume')
    checkpoints.wait_until_finished()
  except BaseException as e:
    _finish_saves(checkpoints, e)
    raise

  eval_metrics = evaluate(config, state, eval_fn, data_sharding)
  log(f'[eval] final: top-1 {eval_metrics["top1"]:.4f} top-5 {eval_metrics["top5"]:.4f} '
      f'on {eval_metrics["eval_examples"]} examples')
  writer.write(step, {'eval_top1': eval_metrics['top1'], 'eval_top5': eval_metrics['top5']})
  writer.close()
  results = {
      'alpha': config.model.alpha, 'resolution': resolution, 'rho': resolution / 224,
      'variant': config.model.variant, 'dataset': config.data.name,
      'mult_adds': model_cost.mult_adds, 'params': model_cost.params,
      'top1': eval_metrics['top1'], 'top5': eval_metrics['top5'], 'eval_examples': eval_metrics['eval_examples'],
      'steps': total_steps, 'train_img_s': timer.img_s() or None,
      'wall_s': time.time() - t_start, 'status': 'done', 'error': None, 'config': config.to_dict(),
  }
  if jax.process_index() == 0:
    atomic_write_json(workdir / 'results.json', results)
  return results


def _finish_saves(checkpoints: ocp.CheckpointManager, error: BaseException) -> None:
  """Let checkpoint writes in flight finish before a failure propagates.

  They hold states already checked finite; exiting would cut them off half written. Not where
  another process may have died: the write's barriers would wait on it.
  """
  if jax.process_count() > 1 and not isinstance(error, NonFiniteLossError):
    return
  try:
    checkpoints.wait_until_finished()
  except Exception:  # noqa: BLE001 - e.g. the disk is full: the error being raised already says why
    pass


def _check_finite(unchecked: list[tuple[int, jax.Array]]) -> None:
  """Raise NonFiniteLossError naming the first diverged step; clears `unchecked`."""
  for step, finite in unchecked:
    if not bool(jax.device_get(finite)):
      raise NonFiniteLossError(f'non-finite loss, gradient or parameters at step {step}; '
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
