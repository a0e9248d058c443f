"""The paper's ablations at 224 px on ImageNet (or the offline dataset by default):

Table 4: depthwise-separable vs full convolutions at α = 1 ("Conv MobileNet");
Table 5: narrow (α = 0.75) vs shallow (the five 14×14×512 blocks removed) MobileNet.

  python -m mnet_jax.main --config=experiments/ablations.py --workdir=runs/sweep   # beside the sweep's points
  python -m mnet_jax.main --config=experiments/ablations.py:imagenet2012 --workdir=gs://bucket/ablations
"""

import ml_collections

from mnet_jax.config_util import parse_arg, sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, preset='offline', resolution=-1)
  config = sibling(__file__, 'sweep').get_config(arg.preset)
  # At the sweep's largest resolution (the paper's 224), so that a1 and a0.75 are sweep points: run into the
  # sweep's workdir, only the conv and shallow models train, with the same seeds, and results.md gains (d), (e).
  resolution = arg.resolution if arg.resolution > 0 else int(config.sweep.resolutions.split(',')[0])
  config.sweep.points = ','.join(f'{name}_r{resolution}' for name in
                                 ('a1', 'conv_a1', 'a0.75', 'shallow_a1'))
  return config
