"""The MobileNet V1 architecture as data: Table 1 of Howard et al. (2017).

Both the Flax model (`models.py`) and the analytic cost model (`cost.py`) walk the
layers produced here, so the network that is trained and the network that is
counted cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

VARIANTS = ('separable', 'conv', 'shallow')
MIN_RESOLUTION = 32
MAX_DEPTH = 8  # the largest depth multiplier accepted, as for alpha: beyond it a typo is likelier than a study
CLASSIFIER_NAME = 'classifier'  # the fully connected layer's name (its Flax module)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One row group of Table 1: a block kind, its stride and output channels at α = 1."""

  kind: str  # 'conv' (full 3x3 convolution) or 'separable' (depthwise 3x3 + pointwise 1x1)
  stride: int
  channels: int


# Table 1. The paper prints "Conv dw / s2" for the last depthwise layer, but its
# input and output are both 7x7 there; every implementation (and the table's own
# shapes) uses stride 1.
MOBILENET_V1 = (
    BlockSpec('conv', 2, 32),
    BlockSpec('separable', 1, 64),
    BlockSpec('separable', 2, 128),
    BlockSpec('separable', 1, 128),
    BlockSpec('separable', 2, 256),
    BlockSpec('separable', 1, 256),
    BlockSpec('separable', 2, 512),
    *(BlockSpec('separable', 1, 512),) * 5,
    BlockSpec('separable', 2, 1024),
    BlockSpec('separable', 1, 1024),
)
# Indices of the five 14x14x512 separable blocks that "Shallow MobileNet" removes (Table 5).
_SHALLOW_REMOVED = range(7, 12)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One concrete layer (after α and ρ are applied)."""

  name: str
  kind: str  # 'conv3x3' | 'depthwise' | 'pointwise' | 'fc'
  stride: int
  in_channels: int
  out_channels: int
  in_size: int  # spatial height = width of the input feature map
  out_size: int


def scaled_channels(channels: int, alpha: float, min_depth: int = 8) -> int:
  """Width-multiplier rule of the reference TF implementation."""
  return max(int(channels * alpha), min_depth)


def block_specs(variant: str = 'separable', depth: float = 1.0) -> tuple[BlockSpec, ...]:
  """The block table of a variant from the paper's ablations (Tables 4 and 5), deepened by `depth`.

  A stage is a run of consecutive blocks of one output width (Table 1's rows grouped by output channels:
  32, 64, 128 x2, 256 x2, 512 x6, 1024 x2). Depth d gives each stage ceil(d x repeats) blocks, as
  EfficientNet does: the first keeps the stage's stride (and so its input width), the others are stride 1 at
  the stage's width. 'shallow' is scaled by its own table, whose 512 stage is the one stride-2 block.
  """
  check_variant(variant)
  check_depth(depth)
  if variant == 'separable':
    table = MOBILENET_V1
  elif variant == 'conv':
    table = tuple(BlockSpec('conv', b.stride, b.channels) for b in MOBILENET_V1)
  else:
    table = tuple(b for i, b in enumerate(MOBILENET_V1) if i not in _SHALLOW_REMOVED)
  stem, *stages = _stages(table)
  # The stem is not a repeated stage, and EfficientNet does not scale it either: one conv at every depth.
  result = list(stem)
  for stage in stages:
    # Less a hair: a product meant to be whole can land just above it (0.07 x 100 = 7.000000000000001).
    repeats = max(1, math.ceil(depth * len(stage) - 1e-9))
    result += [stage[0], *[BlockSpec(stage[-1].kind, 1, stage[0].channels)] * (repeats - 1)]
  return tuple(result)


def _stages(table: tuple[BlockSpec, ...]) -> list[list[BlockSpec]]:
  """`table` cut into runs of consecutive blocks with the same output channels."""
  stages = []
  for block in table:
    if stages and stages[-1][0].channels == block.channels:
      stages[-1].append(block)
    else:
      stages.append([block])
  return stages


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; expected one of {", ".join(VARIANTS)}')


def check_alpha(alpha: float) -> None:
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
    raise ValueError(f'width multiplier alpha must be a positive number, got {alpha!r}')
  if alpha > 8:
    raise ValueError(f'width multiplier alpha={alpha} is absurd (expected 0 < alpha <= 8)')


def check_depth(depth: float) -> None:
  if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not math.isfinite(depth) or depth <= 0:
    raise ValueError(f'depth multiplier must be a positive number, got {depth!r}')
  if depth > MAX_DEPTH:
    raise ValueError(f'depth multiplier {depth} is absurd (expected 0 < depth <= {MAX_DEPTH})')


def check_resolution(resolution: int) -> None:
  if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral):
    raise ValueError(f'resolution must be an integer number of pixels, got {resolution!r}')
  if resolution < MIN_RESOLUTION:
    raise ValueError(f'resolution must be at least {MIN_RESOLUTION} pixels, got {resolution}')


def layers(
    alpha: float = 1.0,
    resolution: int = 224,
    variant: str = 'separable',
    num_classes: int = 1000,
    min_depth: int = 8,
    in_channels: int = 3,
    depth: float = 1.0,
) -> list[Layer]:
  """Every convolution and the classifier of a MobileNet, in order, with shapes; blocks are numbered in order
  whatever the depth multiplier, so depth 1 is Table 1's network, names included."""
  check_alpha(alpha)
  check_resolution(resolution)
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
  if isinstance(min_depth, bool) or not isinstance(min_depth, numbers.Integral) or min_depth < 1:
    raise ValueError(f'min_depth must be a positive integer, got {min_depth!r}')
  result = []
  size, channels = resolution, in_channels
  for index, block in enumerate(block_specs(variant, depth)):
    out_channels = scaled_channels(block.channels, alpha, min_depth)
    out_size = -(-size // block.stride)  # 'SAME' padding
    if block.kind == 'conv':
      name = 'stem' if index == 0 else f'block{index}_conv'
      result.append(Layer(name, 'conv3x3', block.stride, channels, out_channels, size, out_size))
    else:
      result.append(Layer(f'block{index}_depthwise', 'depthwise', block.stride,
                          channels, channels, size, out_size))
      result.append(Layer(f'block{index}_pointwise', 'pointwise', 1,
                          channels, out_channels, out_size, out_size))
    size, channels = out_size, out_channels
  result.append(Layer(CLASSIFIER_NAME, 'fc', 1, channels, num_classes, 1, 1))
  return result


def network_position(module: str) -> int:
  """Where a model module sits from input to output ('stem' 0 ... 'classifier' last), in whichever variant
  has it, at any depth; a layer's BatchNorm ('block3_pointwise_bn') sits with its convolution. Orders
  variables so that the first mismatch named is the one nearest the input."""
  position = _positions().get(module.removesuffix('_bn'))
  if position is None:
    raise ValueError(f'{module!r} is not a layer of any MobileNet variant')
  return position


@functools.cache
def _positions() -> dict[str, int]:
  # Blocks are numbered in order, so the deepest network of each variant names every block of every depth.
  positions = {}
  for variant in VARIANTS:
    for index, layer in enumerate(layers(1.0, MIN_RESOLUTION, variant, depth=MAX_DEPTH)):
      positions.setdefault(layer.name, index)
  return positions
