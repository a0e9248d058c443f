"""Evaluate trained or imported weights without training: top-1/top-5 on a split.

  python -m mnet_jax.convert --slim=mobilenet_v1_1.0_224.ckpt --out=weights/mobilenet_v1_1.0_224
  python -m mnet_jax.main --config=experiments/eval.py:imagenet2012 --workdir=runs/eval_1.0_224 \
      --config.init_from=weights/mobilenet_v1_1.0_224 --config.data.data_dir=/data/tensorflow_datasets

Argument: as experiments/default.py ('offline' or 'imagenet2012', then alpha=..., resolution=...); alpha
must be the weights' width. init_from is a converted checkpoint or a run dir (its newest checkpoint, EMA
weights where it kept them). Evaluation uses TF-slim's preprocessing (central crop 0.875, bilinear squash,
inputs in [-1, 1]), with which the published Keras and slim checkpoints were scored; pass
--config.data.eval_preprocess=square for this project's own. Another split: --config.data.eval_split=...;
a folder of images: --config.data.name=folder --config.data.folder=ROOT.
"""

import ml_collections

from mnet_jax.config_util import sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = sibling(__file__, 'default').get_config(arg)
  config.num_train_steps = 0  # evaluate only
  config.data.eval_preprocess = 'slim'
  config.data.eval_crop = 0.875
  config.model.dtype = 'float32'  # the published scores are float32's
  config.optim.ema_decay = 0.0  # no training: the weights are evaluated as they are
  return config
