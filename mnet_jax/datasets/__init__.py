"""Embedded datasets; importing this package registers them with TFDS."""

from mnet_jax.datasets.textured_shapes import TexturedShapes

DEFAULT_DATASET = 'textured_shapes'  # 72 px, 100 classes; prepares itself offline
TINY_DATASET = 'textured_shapes/tiny'  # 64 px, a few hundred images; for tests
EMBEDDED = (TexturedShapes.name,)

__all__ = ['DEFAULT_DATASET', 'EMBEDDED', 'TINY_DATASET', 'TexturedShapes']
