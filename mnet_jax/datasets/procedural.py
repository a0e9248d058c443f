"""Procedural images of the embedded dataset: textured shapes, rendered with numpy only.

A class is a (shape, texture) pair. Shapes are visible at any resolution; the textures
differ in spatial frequency, so the fine ones blur into each other (and into a flat fill)
when an image is shrunk: lowering the input resolution costs accuracy, as on ImageNet.
Position, size, rotation, stripe orientation and period, colours, background and noise
vary per image. Every image is a pure function of (seed, split, index).
"""

from __future__ import annotations

import io
import pickle
import sys

import numpy as np
from PIL import Image

SHAPES = ('disk', 'square', 'triangle', 'ring')
# Texture periods in native pixels (at 128 px; scaled with the image size). The 'fine'
# ones sit around the Nyquist limit of a 32-64 px view of the image, 'coarse' far above.
TEXTURES = {
    'flat': None,
    'coarse_stripes': (14.0, 22.0),
    'fine_stripes': (3.5, 8.0),
    'fine_checks': (4.0, 9.0),
}
CLASS_NAMES = tuple(f'{shape}_{texture}' for shape in SHAPES for texture in TEXTURES)
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_CODES = {'train': 0, 'test': 1}
_REFERENCE_SIZE = 128
JPEG_QUALITY = 92


def label_of(index: int) -> int:
  """Classes are balanced: example `index` of a split has class `index % NUM_CLASSES`."""
  return index % NUM_CLASSES


def _luminance(rgb: np.ndarray) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114])


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """A smooth two-colour gradient in a random direction."""
  c0, c1 = rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)
  angle = float(rng.uniform(0, 2 * np.pi))
  t = (np.cos(angle) * xx + np.sin(angle) * yy) * 0.5 + 0.5  # xx, yy in [-1, 1]
  t = np.clip(t, 0, 1)[..., None]
  return c0 + (c1 - c0) * t


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Signed distance (in object radii, negative inside) of the canonical shape."""
  if shape == 'disk':
    return np.sqrt(u * u + v * v) - 1.0
  if shape == 'square':
    return np.maximum(np.abs(u), np.abs(v)) - 0.82
  if shape == 'triangle':
    angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3  # outward edge normals
    return np.max(np.stack([float(np.cos(a)) * u + float(np.sin(a)) * v for a in angles]), axis=0) - 0.55
  if shape == 'ring':
    return np.abs(np.sqrt(u * u + v * v) - 0.72) - 0.28
  raise ValueError(f'unknown shape {shape!r}')


def _texture(texture: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
  """Texture weight in [0, 1] at pixel coordinates (x, y); square waves with soft edges."""
  if TEXTURES[texture] is None:
    return np.full(x.shape, 0.5, np.float32)
  low, high = TEXTURES[texture]
  # Python floats keep the float32 arrays float32 (NumPy 2 promotion rules).
  period = float(rng.uniform(low, high)) * scale
  angle = float(rng.uniform(0, np.pi))
  phase = [float(p) for p in rng.uniform(0, 2 * np.pi, 2)]
  a = np.cos(angle) * x + np.sin(angle) * y
  b = -np.sin(angle) * x + np.cos(angle) * y
  wave = np.sin(2 * np.pi * a / period + phase[0])
  if texture.endswith('checks'):
    wave = wave * np.sin(2 * np.pi * b / period + phase[1])
  # Sharpness ~ pixels per half period: the edge is about one pixel wide.
  return np.clip(0.5 + wave * period / 4, 0, 1)


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """One uint8 [size, size, 3] image of class `label`."""
  shape = SHAPES[label // len(TEXTURES)]
  texture = tuple(TEXTURES)[label % len(TEXTURES)]
  scale = size / _REFERENCE_SIZE
  coords = np.arange(size, dtype=np.float32) + 0.5
  y, x = np.meshgrid(coords, coords, indexing='ij')
  image = _background(rng, y / size * 2 - 1, x / size * 2 - 1)

  radius = rng.uniform(0.2, 0.34) * size
  cy, cx = rng.uniform(radius * 0.85, size - radius * 0.85, 2)
  rotation = rng.uniform(0, 2 * np.pi)
  dy, dx = (y - np.float32(cy)) / np.float32(radius), (x - np.float32(cx)) / np.float32(radius)
  cos, sin = np.float32(np.cos(rotation)), np.float32(np.sin(rotation))
  u = cos * dx + sin * dy
  v = cos * dy - sin * dx
  # Coverage from the signed distance in pixels: a one-pixel anti-aliased edge.
  coverage = np.clip(0.5 - _shape_distance(shape, u, v) * float(radius), 0, 1)[..., None]

  # Object colours: a base colour whose luminance stands off the background, and a
  # texture contrast around it (flat objects show the base colour itself).
  background_luminance = _luminance(image[::8, ::8]).mean()
  base = rng.uniform(0.15, 0.85, 3)
  for _ in range(8):
    if abs(_luminance(base) - background_luminance) > 0.2:
      break
    base = rng.uniform(0.15, 0.85, 3)
  contrast = rng.uniform(0.35, 0.6) * np.where(rng.uniform(size=3) < 0.5, -1, 1) * rng.uniform(0.6, 1.0, 3)
  weight = _texture(texture, rng, x, y, scale)[..., None]
  foreground = np.clip(base + (weight - 0.5) * contrast, 0, 1).astype(np.float32)

  image = image * (1 - coverage) + foreground * coverage
  image = image + rng.standard_normal(image.shape, dtype=np.float32) * 0.025
  return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def example(seed: int, split: str, index: int, size: int) -> tuple[bytes, int]:
  """JPEG bytes and label of example `index` of `split`; a pure function of its arguments."""
  label = label_of(index)
  rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
  buffer = io.BytesIO()
  Image.fromarray(render(label, rng, size)).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue(), label


def examples(seed: int, split: str, start: int, stop: int, size: int) -> list[tuple[bytes, int]]:
  """Examples [start, stop) of `split` (one chunk of work for a worker process)."""
  return [example(seed, split, index, size) for index in range(start, stop)]


if __name__ == '__main__':
  # A worker for `textured_shapes`: render examples [start, stop) and pickle them to stdout.
  seed, split, start, stop, size = sys.argv[1:]
  sys.stdout.buffer.write(pickle.dumps(examples(int(seed), split, int(start), int(stop), int(size))))
