"""The layer table against Table 1 of Howard et al. (2017) and the reference width rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnet_jax import architecture, cost

# Table 1, "MobileNet Body Architecture", typed from the paper: (type / stride, filter
# shape, input size). The copy in shared/paper lost the Input Size cell of the rows from
# "5x" on; those cells are typed from the paper's PDF (and each one is the previous row's
# output, so they are also implied by the rows around them). The "5x" rows are expanded.
# Avg Pool and Softmax have no weights and no Layer, so they are not listed in TABLE_1.
TABLE_1_AVG_POOL_INPUT = (7, 7, 1024)
TABLE_1 = [
    ('Conv / s2', (3, 3, 3, 32), (224, 224, 3)),
    ('Conv dw / s1', (3, 3, 32), (112, 112, 32)),
    ('Conv / s1', (1, 1, 32, 64), (112, 112, 32)),
    ('Conv dw / s2', (3, 3, 64), (112, 112, 64)),
    ('Conv / s1', (1, 1, 64, 128), (56, 56, 64)),
    ('Conv dw / s1', (3, 3, 128), (56, 56, 128)),
    ('Conv / s1', (1, 1, 128, 128), (56, 56, 128)),
    ('Conv dw / s2', (3, 3, 128), (56, 56, 128)),
    ('Conv / s1', (1, 1, 128, 256), (28, 28, 128)),
    ('Conv dw / s1', (3, 3, 256), (28, 28, 256)),
    ('Conv / s1', (1, 1, 256, 256), (28, 28, 256)),
    ('Conv dw / s2', (3, 3, 256), (28, 28, 256)),
    ('Conv / s1', (1, 1, 256, 512), (14, 14, 256)),
    *[('Conv dw / s1', (3, 3, 512), (14, 14, 512)),
      ('Conv / s1', (1, 1, 512, 512), (14, 14, 512))] * 5,
    ('Conv dw / s2', (3, 3, 512), (14, 14, 512)),
    ('Conv / s1', (1, 1, 512, 1024), (7, 7, 512)),
    # The paper prints "Conv dw / s2" here, but its own Input Size column contradicts
    # that: this layer takes 7x7x1024 and the next one takes 7x7x1024 too, which only a
    # stride of 1 gives (stride 2 would make 4x4). Typed as s1 on that evidence.
    ('Conv dw / s1', (3, 3, 1024), (7, 7, 1024)),
    ('Conv / s1', (1, 1, 1024, 1024), (7, 7, 1024)),
    ('FC / s1', (1024, 1000), (1, 1, 1024)),
]


def as_table_1_row(layer: architecture.Layer) -> tuple:
  """A Layer written the way Table 1 writes it."""
  size = (layer.in_size, layer.in_size, layer.in_channels)
  if layer.kind == 'conv3x3':
    return (f'Conv / s{layer.stride}', (3, 3, layer.in_channels, layer.out_channels), size)
  if layer.kind == 'depthwise':
    assert layer.out_channels == layer.in_channels
    return (f'Conv dw / s{layer.stride}', (3, 3, layer.in_channels), size)
  if layer.kind == 'pointwise':
    return (f'Conv / s{layer.stride}', (1, 1, layer.in_channels, layer.out_channels), size)
  assert layer.kind == 'fc'
  return (f'FC / s{layer.stride}', (layer.in_channels, layer.out_channels), size)


def test_table_1_at_224():
  rows = [as_table_1_row(layer) for layer in architecture.layers(1.0, 224)]
  assert len(rows) == len(TABLE_1)
  for index, (got, want) in enumerate(zip(rows, TABLE_1, strict=True)):
    assert got == want, f'row {index}'


def test_28_layers():
  # Section 3.2: "Counting depthwise and pointwise convolutions as separate layers,
  # MobileNet has 28 layers" (27 convolutions and the fully connected layer).
  assert len(architecture.layers()) == 28


def test_table_1_arithmetic_matches_cost_model():
  """Mult-Adds and weights recomputed from the typed Table 1 alone (eq. 2 and 4)."""
  # A layer's output size is the next row's input size (the Avg Pool row's after the
  # last convolution); the FC layer's is 1x1.
  out_sizes = [row[2][0] for row in TABLE_1[1:-1]] + [TABLE_1_AVG_POOL_INPUT[0], 1]
  mult_adds = sum(math.prod(shape) * out * out for (_, shape, _), out in zip(TABLE_1, out_sizes, strict=True))
  weights = sum(math.prod(shape) for _, shape, _ in TABLE_1)
  model = cost.model_cost(1.0, 224)
  assert mult_adds == model.mult_adds == 568_740_352
  # The cost model also counts the classifier's 1000 biases.
  assert weights + 1000 == model.params == 4_210_088


def test_conv_variant_replaces_each_block_by_one_full_conv():
  """Conv MobileNet (Table 4): same strides, sizes and output channels, full 3x3 convolutions."""
  conv = architecture.layers(1.0, 224, 'conv')
  assert [layer.kind for layer in conv] == ['conv3x3'] * 14 + ['fc']
  # The inputs of the full convolutions are the inputs of the separable blocks (Table 1's
  # first row and every "Conv dw" row), their outputs the outputs of the blocks.
  block_inputs = [row[2] for row in TABLE_1 if row[0].startswith(('Conv dw', 'Conv / s2'))]
  assert [(layer.in_size, layer.in_size, layer.in_channels) for layer in conv[:-1]] == block_inputs
  block_outputs = [32] + [row[1][3] for row in TABLE_1 if row[1][:2] == (1, 1)]
  assert [layer.out_channels for layer in conv[:-1]] == block_outputs
  assert [layer.stride for layer in conv[:-1]] == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


def test_shallow_variant_drops_the_five_14x14x512_blocks():
  """Shallow MobileNet (Table 5): Table 1 without the "5x" rows."""
  shallow = [as_table_1_row(layer) for layer in architecture.layers(1.0, 224, 'shallow')]
  assert shallow == TABLE_1[:13] + TABLE_1[23:]
  assert len(shallow) == 28 - 10


# 'SAME' padding: every stride-2 layer halves the size, rounding up (TensorFlow's rule).
@pytest.mark.parametrize('resolution, sizes', [
    (33, [17, 9, 5, 3, 2]),
    (97, [49, 25, 13, 7, 4]),
    (32, [16, 8, 4, 2, 1]),
    (160, [80, 40, 20, 10, 5]),
])
def test_feature_map_sizes_at_any_resolution(resolution, sizes):
  s1, s2, s3, s4, s5 = sizes
  # Output size of each of the 27 convolutions, in Table 1's order.
  expected = [s1, s1, s1, s2, s2, s2, s2, s3, s3, s3, s3, s4, s4] + [s4] * 10 + [s5, s5, s5, s5]
  got = [layer.out_size for layer in architecture.layers(0.25, resolution)[:-1]]
  assert got == expected
  assert architecture.layers(0.25, resolution)[0].in_size == resolution


@pytest.mark.parametrize('alpha, channels', [
    # max(int(c * alpha), 8), the rule of the reference TF implementation; note the
    # truncation (0.35 x 32 = 11.2 -> 11) and the floor of 8 (0.1 x 64 = 6.4 -> 8).
    (0.25, [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]),
    (0.35, [11, 22, 44, 44, 89, 89, 179, 179, 179, 179, 179, 179, 358, 358]),
    (0.1, [8, 8, 12, 12, 25, 25, 51, 51, 51, 51, 51, 51, 102, 102]),
    (1.5, [48, 96, 192, 192, 384, 384, 768, 768, 768, 768, 768, 768, 1536, 1536]),
])
def test_width_multiplier_channels(alpha, channels):
  blocks = [layer for layer in architecture.layers(alpha, 64) if layer.kind in ('conv3x3', 'pointwise')]
  assert [layer.out_channels for layer in blocks] == channels


def test_min_depth_is_a_parameter():
  assert architecture.layers(0.1, 64, min_depth=16)[0].out_channels == 16


@pytest.mark.parametrize('min_depth', [0, -8, 2.5, True])
def test_bad_min_depth(min_depth):
  with pytest.raises(ValueError, match='min_depth'):
    architecture.layers(0.1, 64, min_depth=min_depth)


def test_numpy_scalars_are_numbers_too():
  # e.g. alphas from np.linspace or resolutions from an np.array sweep grid
  assert architecture.layers(np.float64(0.5), np.int64(64)) == architecture.layers(0.5, 64)
  assert architecture.layers(np.float32(0.25), 32, num_classes=np.int32(10))[-1].out_channels == 10


@pytest.mark.parametrize('alpha', [0, -0.5, float('nan'), float('inf'), 100.0, '1.0', None])
def test_bad_alpha(alpha):
  with pytest.raises(ValueError, match='alpha'):
    architecture.layers(alpha, 224)


@pytest.mark.parametrize('resolution, problem', [
    (31, 'at least 32'),
    (0, 'at least 32'),
    (-224, 'at least 32'),
    (100.5, 'integer'),
    (224.0, 'integer'),
    ('224', 'integer'),
    (True, 'integer'),
])
def test_bad_resolution(resolution, problem):
  with pytest.raises(ValueError, match=f'resolution.*{problem}'):
    architecture.layers(1.0, resolution)


def test_smallest_resolution_is_accepted():
  assert architecture.layers(0.25, 32)[-2].out_size == 1


@pytest.mark.parametrize('variant', ['mobilenet', 'Separable', '', 'depthwise'])
def test_bad_variant(variant):
  with pytest.raises(ValueError, match='unknown variant'):
    architecture.layers(1.0, 224, variant)


def test_network_position_orders_input_to_output_where_names_do_not():
  # Sorted as strings, block10 comes before block2 and the classifier before the stem.
  written = ['classifier', 'block10_pointwise_bn', 'block2_depthwise', 'stem_bn', 'block10_depthwise',
             'block2_pointwise', 'block1_pointwise']
  assert sorted(written, key=architecture.network_position) == [
      'stem_bn', 'block1_pointwise', 'block2_depthwise', 'block2_pointwise', 'block10_depthwise',
      'block10_pointwise_bn', 'classifier']
  assert sorted(['classifier', 'block11_conv', 'block3_conv', 'stem'], key=architecture.network_position) == [
      'stem', 'block3_conv', 'block11_conv', 'classifier']
  with pytest.raises(ValueError, match='not a layer'):
    architecture.network_position('Dense_0')


# --- The depth multiplier ------------------------------------------------------------------------

# Today's layer names, written out: the stem, then blocks numbered from 1 in order (13 separable blocks in Table 1,
# 8 in the shallow network), then the classifier. Checkpoints and converted weights are keyed by these names.
SEPARABLE_NAMES = ['stem', *[f'block{i}_{part}' for i in range(1, 14) for part in ('depthwise', 'pointwise')],
                   'classifier']
CONV_NAMES = ['stem', *[f'block{i}_conv' for i in range(1, 14)], 'classifier']
SHALLOW_NAMES = ['stem', *[f'block{i}_{part}' for i in range(1, 9) for part in ('depthwise', 'pointwise')],
                 'classifier']


@pytest.mark.parametrize('depth', [1.0, 1, np.float64(1.0)])
def test_depth_1_is_table_1_names_included(depth):
  separable = architecture.layers(1.0, 224, depth=depth)
  assert [layer.name for layer in separable] == SEPARABLE_NAMES
  assert [as_table_1_row(layer) for layer in separable] == TABLE_1
  shallow = architecture.layers(1.0, 224, 'shallow', depth=depth)
  assert [layer.name for layer in shallow] == SHALLOW_NAMES
  assert [as_table_1_row(layer) for layer in shallow] == TABLE_1[:13] + TABLE_1[23:]
  conv = architecture.layers(1.0, 224, 'conv', depth=depth)
  assert [layer.name for layer in conv] == CONV_NAMES
  # Each full convolution takes a separable block's input (Table 1's first row and every "Conv dw" row).
  block_inputs = [row[2] for row in TABLE_1 if row[0].startswith(('Conv dw', 'Conv / s2'))]
  assert [(layer.in_size, layer.in_size, layer.in_channels) for layer in conv[:-1]] == block_inputs
  assert [layer.out_channels for layer in conv[:-1]] == [32, 64, 128, 128, 256, 256, *[512] * 6, 1024, 1024]


def blocks(layers: list[architecture.Layer]) -> list[tuple[int, int]]:
  """(stride, output channels) of each block: a full convolution, or a depthwise layer and its pointwise one."""
  result = []
  for layer in layers:
    if layer.kind in ('conv3x3', 'depthwise'):
      result.append((layer.stride, layer.out_channels))
    elif layer.kind == 'pointwise':
      result[-1] = (result[-1][0], layer.out_channels)
  return result


# Stages of Table 1, by output width: the stem (32, never repeated), 64 x1, 128 x2, 256 x2, 512 x6, 1024 x2; the
# shallow network's 512 stage is its one stride-2 block. Depth d: ceil(d x repeats) blocks per stage, the first
# with the stage's stride, the rest stride 1. Written out per depth:
DEPTH_BLOCKS = {
    ('separable', 2.0): [(2, 32), (1, 64), (1, 64), (2, 128), *[(1, 128)] * 3, (2, 256), *[(1, 256)] * 3,
                         (2, 512), *[(1, 512)] * 11, (2, 1024), *[(1, 1024)] * 3],
    # ceil(0.5) = ceil(1) = 1 block; the 512 stage ceil(3) = 3.
    ('separable', 0.5): [(2, 32), (1, 64), (2, 128), (2, 256), (2, 512), (1, 512), (1, 512), (2, 1024)],
    # ceil(1.4) = 2, ceil(2.8) = 3, ceil(8.4) = 9: always rounded up.
    ('separable', 1.4): [(2, 32), (1, 64), (1, 64), (2, 128), (1, 128), (1, 128), (2, 256), (1, 256), (1, 256),
                         (2, 512), *[(1, 512)] * 8, (2, 1024), (1, 1024), (1, 1024)],
    # However small the depth, every stage keeps its first block, so widths and strides stay Table 1's.
    ('separable', 0.01): [(2, 32), (1, 64), (2, 128), (2, 256), (2, 512), (2, 1024)],
    ('shallow', 2.0): [(2, 32), (1, 64), (1, 64), (2, 128), *[(1, 128)] * 3, (2, 256), *[(1, 256)] * 3,
                       (2, 512), (1, 512), (2, 1024), *[(1, 1024)] * 3],
    ('shallow', 0.5): [(2, 32), (1, 64), (2, 128), (2, 256), (2, 512), (2, 1024)],
}


@pytest.mark.parametrize('variant, depth', DEPTH_BLOCKS)
def test_depth_repeats_each_stage(variant, depth):
  layers = architecture.layers(1.0, 224, variant, depth=depth)
  assert blocks(layers) == DEPTH_BLOCKS[variant, depth]
  # Blocks are numbered in order, whatever the depth.
  separable_names = ['stem', *[f'block{i}_{part}' for i in range(1, len(DEPTH_BLOCKS[variant, depth]))
                               for part in ('depthwise', 'pointwise')], 'classifier']
  assert [layer.name for layer in layers] == separable_names
  # Each layer takes the one before's output.
  for before, layer in zip(layers, layers[1:], strict=False):
    assert (layer.in_channels, layer.in_size) == (before.out_channels, before.out_size if layer.kind != 'fc' else 1)


@pytest.mark.parametrize('depth', [2.0, 0.5])
def test_conv_variant_scales_like_the_separable_one(depth):
  conv = architecture.layers(1.0, 224, 'conv', depth=depth)
  assert [layer.kind for layer in conv] == ['conv3x3'] * (len(conv) - 1) + ['fc']
  assert blocks(conv) == DEPTH_BLOCKS['separable', depth]
  assert [layer.name for layer in conv] == ['stem', *[f'block{i}_conv' for i in range(1, len(conv) - 1)],
                                            'classifier']


def test_largest_depth():
  # 8 x (1 + 2 + 2 + 6 + 2) blocks after the stem.
  assert len(blocks(architecture.layers(0.25, 32, depth=8))) == 1 + 8 * 13


@pytest.mark.parametrize('depth', [0, -1.0, float('nan'), float('inf'), 8.5, 100, '2', None, True])
def test_bad_depth(depth):
  from mnet_jax import config_checks
  from mnet_jax.models import MobileNetV1

  with pytest.raises(ValueError, match='depth'):
    architecture.layers(1.0, 224, depth=depth)
  with pytest.raises(ValueError, match='depth'):
    cost.model_cost(depth=depth)
  with pytest.raises(ValueError, match='depth'):
    MobileNetV1(depth=depth).check()
  with pytest.raises(ValueError, match='depth'):
    config_checks.check({'model': {'alpha': 1.0, 'depth': depth}})


def test_network_position_at_any_depth():
  # The deepest network accepted (depth 8) ends with block104; its names sort from input to output like depth 1's.
  written = ['classifier', 'block104_pointwise', 'block30_depthwise_bn', 'stem', 'block30_pointwise',
             'block4_depthwise']
  assert sorted(written, key=architecture.network_position) == [
      'stem', 'block4_depthwise', 'block30_depthwise_bn', 'block30_pointwise', 'block104_pointwise', 'classifier']
  assert sorted(['classifier', 'block104_conv', 'block26_conv', 'stem'], key=architecture.network_position) == [
      'stem', 'block26_conv', 'block104_conv', 'classifier']
  with pytest.raises(ValueError, match='not a layer'):
    architecture.network_position('block105_depthwise')
