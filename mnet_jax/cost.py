"""Analytic Mult-Adds and parameter counts, walked from the same layer table as the model.

Convention (the paper's): Mult-Adds are the multiply-adds of the convolutions and the
fully connected layer; parameters are the convolution and fully connected weights plus
the classifier bias. BatchNorm, activations and pooling are not counted.

    python -m mnet_jax.cost --alpha 1,0.75,0.5,0.25 --resolution 224,192,160,128
    python -m mnet_jax.cost --depth 2
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys

from mnet_jax import architecture, cli

# The per-layer-type rows of the paper's Table 2.
LAYER_TYPES = {'pointwise': 'Conv 1x1', 'depthwise': 'Conv DW 3x3',
               'conv3x3': 'Conv 3x3', 'fc': 'Fully Connected'}


@dataclasses.dataclass(frozen=True)
class LayerCost:
  layer: architecture.Layer
  mult_adds: int
  params: int


def layer_cost(layer: architecture.Layer) -> LayerCost:
  """Mult-Adds and parameters of one layer (eq. 2 and 5 of the paper)."""
  spatial = layer.out_size * layer.out_size
  if layer.kind == 'conv3x3':
    weights = 9 * layer.in_channels * layer.out_channels
  elif layer.kind == 'depthwise':
    weights = 9 * layer.in_channels
  else:  # pointwise and fully connected
    weights = layer.in_channels * layer.out_channels
  bias = layer.out_channels if layer.kind == 'fc' else 0
  return LayerCost(layer, weights * spatial, weights + bias)


@dataclasses.dataclass(frozen=True)
class ModelCost:
  alpha: float
  resolution: int
  variant: str
  num_classes: int
  layers: tuple[LayerCost, ...]
  depth: float = 1.0

  @property
  def mult_adds(self) -> int:
    return sum(c.mult_adds for c in self.layers)

  @property
  def params(self) -> int:
    return sum(c.params for c in self.layers)

  def by_type(self) -> dict[str, tuple[int, int]]:
    """Table 2: (Mult-Adds, params) summed per layer type."""
    totals = collections.defaultdict(lambda: [0, 0])
    for c in self.layers:
      totals[LAYER_TYPES[c.layer.kind]][0] += c.mult_adds
      totals[LAYER_TYPES[c.layer.kind]][1] += c.params
    return {t: tuple(totals[t]) for t in LAYER_TYPES.values() if t in totals}


def model_cost(alpha: float = 1.0, resolution: int = 224, variant: str = 'separable',
               num_classes: int = 1000, min_depth: int = 8, depth: float = 1.0) -> ModelCost:
  """Cost of a MobileNet of width multiplier `alpha` and depth multiplier `depth` at input size `resolution`."""
  layers = architecture.layers(alpha, resolution, variant, num_classes, min_depth, depth=depth)
  return ModelCost(alpha, resolution, variant, num_classes, tuple(map(layer_cost, layers)), depth)


def _model_name(cost: ModelCost) -> str:
  """'1 MobileNet-224', with the variant and the depth multiplier where they are not the paper's model's."""
  notes = [cost.variant] if cost.variant != 'separable' else []
  notes += [f'depth {cost.depth:g}'] if cost.depth != 1 else []
  return f'{cost.alpha:g} MobileNet-{cost.resolution}' + (f' ({", ".join(notes)})' if notes else '')


def format_layers(cost: ModelCost) -> str:
  """A readable per-layer table followed by the Table 2 breakdown."""
  depth = f', depth {cost.depth:g}' if cost.depth != 1 else ''
  lines = [f'MobileNet {cost.alpha:g}-{cost.resolution} ({cost.variant}{depth}, {cost.num_classes} classes)',
           f'{"layer":<20} {"type":<16} {"s":>2} {"input":>16} {"Mult-Adds":>13} {"params":>10}']
  for c in cost.layers:
    size = f'{c.layer.in_size}x{c.layer.in_size}x{c.layer.in_channels}'
    lines.append(f'{c.layer.name:<20} {LAYER_TYPES[c.layer.kind]:<16} {c.layer.stride:>2} '
                 f'{size:>16} {c.mult_adds:>13,} {c.params:>10,}')
  lines.append(f'{"total":<57} {cost.mult_adds:>13,} {cost.params:>10,}')
  lines += ['', f'{"type":<16} {"Mult-Adds":>10} {"Parameters":>11}']
  for kind, (mult_adds, params) in cost.by_type().items():
    lines.append(f'{kind:<16} {100 * mult_adds / cost.mult_adds:>9.2f}% '
                 f'{100 * params / cost.params:>10.2f}%')
  return '\n'.join(lines)


def format_grid(costs: list[ModelCost]) -> str:
  """The paper's Tables 6/7 layout: one row per model."""
  names = [_model_name(c) for c in costs]
  width = max(28, *map(len, names))
  lines = [f'{"Model":<{width}} {"Million Mult-Adds":>18} {"Million Parameters":>19}']
  for name, c in zip(names, costs, strict=True):
    lines.append(f'{name:<{width}} {c.mult_adds / 1e6:>18.1f} {c.params / 1e6:>19.2f}')
  return '\n'.join(lines)


def summary(cost: ModelCost) -> dict:
  return {'alpha': cost.alpha, 'resolution': cost.resolution, 'variant': cost.variant, 'depth': cost.depth,
          'num_classes': cost.num_classes, 'mult_adds': cost.mult_adds, 'params': cost.params}


def _number_list(kind):
  def parse(text):
    try:
      values = [kind(v) for v in text.split(',') if v.strip()]
    except ValueError:
      values = []
    if not values:
      raise argparse.ArgumentTypeError(f'expected comma-separated {kind.__name__}s, got {text!r}')
    return values
  return parse


def main(argv: list[str] | None = None) -> int:
  parser = cli.OneLineParser(prog='python -m mnet_jax.cost', description=__doc__.split('\n')[0])
  parser.add_argument('--alpha', type=_number_list(float), default=[1.0], help='width multiplier(s), e.g. 1,0.75')
  parser.add_argument('--resolution', type=_number_list(int), default=[224], help='input size(s), e.g. 224,192')
  parser.add_argument('--variant', default='separable', help=f'one of {", ".join(architecture.VARIANTS)}')
  parser.add_argument('--depth', type=float, default=1.0,
                      help='depth multiplier: a stage of N blocks of one width gets ceil(depth x N)')
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--json', action='store_true', help='print JSON instead of a table')
  args = parser.parse_args(argv)
  try:
    costs = [model_cost(a, r, args.variant, args.num_classes, depth=args.depth)
             for a in args.alpha for r in args.resolution]
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return cli.USAGE_ERROR
  if args.json:
    rows = [summary(c) for c in costs]
    print(json.dumps(rows[0] if len(rows) == 1 else rows))
  elif len(costs) == 1:
    print(format_layers(costs[0]))
  else:
    print(format_grid(costs))
  return 0


if __name__ == '__main__':
  sys.exit(main())
