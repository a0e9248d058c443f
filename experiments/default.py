"""One MobileNet training run.

  python -m mnet_jax.main --config=experiments/default.py --workdir=runs/default
  python -m mnet_jax.main --config=experiments/default.py:imagenet2012 --workdir=gs://bucket/mnet

Argument: the preset ('offline', the default: the embedded dataset on a CPU in minutes;
'imagenet2012': the paper's recipe), then `key=value` items: alpha, resolution.
Any field can also be overridden with --config.FIELD=VALUE.
"""

import ml_collections

from mnet_jax.config_util import parse_arg
from mnet_jax.datasets import DEFAULT_DATASET


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, preset='offline', alpha=-1.0, resolution=-1)
  if arg.preset not in ('offline', 'imagenet2012'):
    raise ValueError(f'unknown preset {arg.preset!r}; expected offline or imagenet2012')
  imagenet = arg.preset == 'imagenet2012'
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.alpha = 1.0 if imagenet else 0.5
  config.model.resolution = 224 if imagenet else 64
  config.model.variant = 'separable'
  config.model.depth = 1.0  # depth multiplier: each stage of same-width blocks ceil(depth x its blocks) long
  config.model.activation = 'relu6'
  config.model.min_depth = 8
  config.model.dropout_rate = 0.001  # TF-slim: keep_prob 0.999
  config.model.bn_momentum = 0.9997 if imagenet else 0.99  # short runs need faster BN averages
  config.model.bn_epsilon = 1e-3
  config.model.dtype = 'bfloat16' if imagenet else 'float32'
  config.model.depthwise_impl = 'auto'  # shifted multiply-adds on CPU, grouped conv elsewhere
  config.model.kernel_init = 'slim' if imagenet else 'he_normal'  # 'slim': TF-slim's truncated normal, std 0.09
  if arg.alpha > 0:
    config.model.alpha = arg.alpha
  if arg.resolution > 0:
    config.model.resolution = arg.resolution

  config.data = ml_collections.ConfigDict()
  config.data.name = 'imagenet2012' if imagenet else DEFAULT_DATASET
  config.data.folder = ''  # root of root/<split>/<label>/*.jpg when name == 'folder'
  config.data.data_dir = ''  # TFDS data dir; '' = TFDS's default (~/tensorflow_datasets)
  config.data.train_split = 'train'
  # > 0: train on that many examples, the first of one fixed class-balanced order (the data-size axis: the same
  # subset for every point and seed, the smaller nested in the larger); -1: the whole train split.
  config.data.train_examples = -1
  config.data.eval_split = 'validation' if imagenet else 'test'
  config.data.min_area = 0.35 if imagenet else 0.5  # the paper limits small crops
  config.data.aspect_range = (3 / 4, 4 / 3)
  config.data.flip = True
  config.data.eval_crop = 0.875
  config.data.eval_preprocess = 'square'  # or 'slim': TF-slim's central_crop + bilinear squash (published scores)
  config.data.cache = not imagenet

  config.optim = ml_collections.ConfigDict()
  config.optim.optimizer = 'rmsprop'
  config.optim.rmsprop_decay = 0.9
  config.optim.rmsprop_initial_scale = 1.0  # TF's: the mean square starts at 1, so the first ~40 steps are small
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.epsilon = 1.0
  # Per base_batch_size images. With epsilon 1.0, RMSprop steps like SGD of this rate; the offline
  # rate was measured on textured_shapes (alpha 0.5 at 64 px: 82% top-1 in 500 steps of 64).
  # ImageNet: the TPU reference's 0.165 per 256 (tensorflow/tpu models/official/mobilenet, the same RMSprop at
  # batch 1024); README "The ImageNet recipe" compares every value with its source.
  config.optim.learning_rate = 0.165 if imagenet else 1.6
  config.optim.base_batch_size = 256
  config.optim.schedule = 'exponential' if imagenet else 'cosine'
  config.optim.decay_rate = 0.94
  config.optim.decay_epochs = 3.0 if imagenet else 2.5  # the TPU reference's 0.94 every 3 epochs
  config.optim.warmup_epochs = 0.0 if imagenet else 0.5  # none in the TPU reference: RMSprop's start is slow
  config.optim.weight_decay = 4e-5
  config.optim.grad_clip_norm = 0.0
  config.optim.label_smoothing = 0.0  # the paper: no label smoothing
  config.optim.ema_decay = 0.995 if imagenet else 0.0  # the TPU reference's; 0 disables the EMA of weights

  config.batch_size = 1024 if imagenet else 64  # global, over all devices and hosts
  config.num_epochs = 120.0 if imagenet else 4.0
  config.num_train_steps = -1  # >= 0 overrides num_epochs; 0 only evaluates (e.g. init_from's weights)
  # Start from trained weights: a converted checkpoint (python -m mnet_jax.convert) or a run dir; the optimizer
  # starts fresh, and a classifier of another class count is replaced. A run that has checkpoints resumes instead.
  config.init_from = ''
  config.log_every_steps = 100 if imagenet else 20
  config.eval_every_steps = 5000 if imagenet else 0  # 0: evaluate at the end only
  # Learning curves (<run dir>/curve.json, the sweep's curves.csv): 'log:K' evaluates at K doubling steps ending at
  # the last, '50,100,300' at those steps, '' at the end only (with eval_every_steps' multiples in every case).
  config.eval_at = ''
  config.checkpoint_every_steps = 2000 if imagenet else 100
  config.max_checkpoints_to_keep = 3
  config.compilation_cache_dir = ''  # '' = <workdir>/.jax_cache
  config.allow_config_change = False  # resume a run dir whose saved config differs
  return config
