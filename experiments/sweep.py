"""The α×ρ study (the paper's Tables 6/7 and Figures 4/5).

  python -m mnet_jax.main --config=experiments/sweep.py --workdir=runs/sweep          # offline, 16 points x 3 seeds
  python -m mnet_jax.main --config=experiments/sweep.py:smoke --workdir=runs/smoke    # a few points, CI
  python -m mnet_jax.main --config=experiments/sweep.py:imagenet2012 --workdir=gs://bucket/sweep

  python -m mnet_jax.main --config=experiments/sweep.py:steps --workdir=runs/steps      # α × training steps

Grid fields are comma-separated strings, e.g. --config.sweep.alphas=1,0.5 or
--config.sweep.only=a1_r224 (run one point, e.g. one point per TPU slice). Each point sets model.alpha,
model.resolution and model.variant, so overriding those is an error that names the sweep field to use.
Any other field is an axis through sweep.axes (mnet_jax/study.py), e.g.
--config.sweep.axes="num_train_steps=150,300;optim.learning_rate=0.004,0.008".
"""

import ml_collections

from mnet_jax.config_util import parse_arg, sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, preset='offline')
  if arg.preset not in ('offline', 'smoke', 'steps', 'imagenet2012'):
    raise ValueError(f'unknown preset {arg.preset!r}; expected offline, smoke, steps or imagenet2012')
  imagenet = arg.preset == 'imagenet2012'
  config = sibling(__file__, 'default').get_config('imagenet2012' if imagenet else 'offline')
  config.sweep = ml_collections.ConfigDict()
  config.sweep.variants = 'separable'
  config.sweep.alphas = '1,0.75,0.5,0.25'
  # The paper's ρ ratios 7:6:5:4 on a base that suits the task (224 on ImageNet, 63 offline): no point's last
  # feature map is 1x1 (at 32 px it is, and training there was measured to be numerically chaotic).
  config.sweep.resolutions = '224,192,160,128' if imagenet else '63,54,45,36'
  config.sweep.points = ''  # explicit point names instead of the grid, e.g. a1_r224,conv_a1_r224
  config.sweep.only = ''  # run only these point names
  # Any other config field as an axis: "FIELD=V1,V2;FIELD=V1,V2" (a product; element-wise with zip_axes), or, in a
  # config file, a list of dicts, one per point. An axis on model.alpha/resolution/variant replaces that grid field.
  config.sweep.axes = ''
  config.sweep.zip_axes = False
  config.sweep.seeds = '0,1,2'  # each point once per seed: mean and 95% CI over seeds
  # Points trained side by side, each in its own process on its own cores (CPU only; mnet_jax/sweep_workers.py):
  # 2 on a 2-core machine. Each point then rounds as a one-core run does, not as the default's two-core run.
  config.sweep.workers = 1
  config.sweep.seeds_together = True  # a point's seeds as one vmapped step (far less per-step overhead)
  config.sweep.latency_batch = 32  # throughput batch; latency is measured at batch 1; 0 skips both
  # The mobile-runtime axis: single-image latency of the float32 TFLite export in LiteRT's interpreter (XNNPACK)
  # at 1 and 2 threads, once per point (mnet_jax.export). Measured 3.1-3.4 s per point, ~1 min of the study.
  config.sweep.tflite_latency = True
  # Also export each seed's model as full-integer int8 (calibrated on 300 training images): its top-1 on the eval
  # split, and the int8 flatbuffer's latency. Measured 6-13 s per seed (0.25-36 to 1.0-63): ~7 min of the study.
  config.sweep.tflite_int8 = False
  if arg.preset in ('offline', 'steps'):
    # One recipe for every point, chosen on the validation split (README: "How the offline recipe was chosen").
    config.num_train_steps = 300
    config.checkpoint_every_steps = 150  # a point's run takes 1-4 min; each save of its seeds costs ~1.3 s
    config.model.bn_momentum = 0.9  # 0.99 lagged the weights in runs this short
    config.optim.epsilon = 1e-3  # RMSprop's epsilon 1.0 (TF-slim) made seeds of one point spread over 15-30 points
    config.optim.learning_rate = 0.008
    config.optim.rmsprop_initial_scale = 0.0  # TF's 1.0 spends the first ~40 of 300 steps on tiny updates
    config.model.kernel_init = 'slim'  # TF-slim's; He's std 0.47 on depthwise kernels slowed every width
    config.optim.warmup_epochs = 0.1
    # No crop augmentation: 300 steps of 64 see each training image about once, so crops cannot curb
    # overfitting, and rescaling a crop changes the texture period that, with the shape, is the class
    # (periods 1.36x apart, crops of area 0.5 rescale by up to 1.41x). Train and eval see the whole image.
    config.data.min_area = 1.0
    config.data.eval_crop = 1.0
  if arg.preset == 'steps':
    # How top-1 and eval loss grow with training compute: α × training length at one resolution, each run with its
    # own full cosine schedule, and a learning curve at doubling steps (eval_at).
    config.sweep.alphas = '1,0.5,0.25'
    config.sweep.resolutions = '45'
    config.sweep.axes = 'num_train_steps=75,150,300,600'
    config.eval_at = 'log:4'  # 600 steps: 75, 150, 300, 600; 75 steps: 9, 19, 38, 75
    config.sweep.latency_batch = 0  # the question is training compute: no latency probes
    config.sweep.tflite_latency = False
  if arg.preset == 'smoke':
    config.sweep.alphas = '0.5,0.25'
    config.sweep.resolutions = '48,40'
    config.num_train_steps = 30
    config.batch_size = 32
    config.checkpoint_every_steps = 10
    config.log_every_steps = 10
    config.sweep.latency_batch = 8
    config.sweep.seeds = '0,1'
  return config
