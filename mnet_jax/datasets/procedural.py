"""Procedural images of the embedded dataset: textured shapes, rendered with numpy only.

A class is a (shape, texture) pair. The object is large and near the centre, so a crop
of half the image still shows its shape and texture. Shapes are visible at any input
resolution; the textures are luminance patterns of graded spatial frequency, so when an
image is shrunk with anti-aliasing the finest, then the next ones, blur into a flat fill:
lowering the input resolution costs accuracy, as on ImageNet. Colours, rotation,
position, size, the texture's phase (and, where the class does not fix it, orientation and
period), a faint background gradient, a few flat distractor blobs and pixel noise vary per
image. Every image is a pure function of (design, seed, split, index).

Two designs: `shapes16` (4 shapes x 4 textures: flat, coarse, medium, fine; the tiny test
config) and `shapes100` (5 shapes x 20 textures: stripes at 0 or 90 degrees or checks at 0
or 45 degrees, each at 5 periods; the default). With 100 classes, accuracy is the sum of
many small distinctions learnt at different times rather than a few learnt all at once, so
it moves smoothly with width, resolution and training (and top-5 carries information).
The orientations are the ones a horizontal flip maps onto themselves, so flip augmentation
never turns one class into another.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import sys

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Texture:
  """A luminance pattern: 'flat', 'stripes' or 'checks'; period range in native pixels at 128 px (scaled with
  the image size); orientation in degrees, or None for a random one per image."""

  kind: str
  period: tuple[float, float] | None = None
  orientation: float | None = None


# shapes16: the eval view of a 128 px image at input resolution r has 112 / r native pixels per
# input pixel, and a period below ~2.5 input pixels is mostly filtered out by the anti-aliased
# resize: 'fine' survives at >= 64-80 px, 'medium' at >= 40-48 px, 'coarse' everywhere.
_TEXTURES16 = {
    'flat': Texture('flat'),
    'coarse_stripes': Texture('stripes', (14.0, 20.0)),
    'medium_checks': Texture('checks', (6.5, 10.0)),
    'fine_stripes': Texture('stripes', (3.5, 5.5)),
}
# shapes100: five periods, log-spaced so that at the offline grid's resolutions (63/54/45/36 px) one
# more level blurs away at each step down: at 63 px the finest is ~3 input pixels, at 36 px the two
# finest are below 2.3. Each level's range is +-8% so neighbouring levels never overlap.
_PERIODS100 = (5.3, 7.2, 9.8, 13.3, 18.0)
_KINDS100 = (('stripes', 0.0), ('stripes', 90.0), ('checks', 0.0), ('checks', 45.0))
_TEXTURES100 = {f'{kind}{angle:g}_p{level}': Texture(kind, (0.92 * period, 1.08 * period), angle)
                for level, period in enumerate(_PERIODS100) for kind, angle in _KINDS100}
DESIGNS = {
    'shapes16': (('disk', 'square', 'triangle', 'ring'), _TEXTURES16),
    'shapes100': (('disk', 'square', 'triangle', 'ring', 'cross'), _TEXTURES100),
}
SPLIT_CODES = {'train': 0, 'test': 1, 'validation': 2}
_REFERENCE_SIZE = 128
JPEG_QUALITY = 92
_NUM_DISTRACTORS = (0, 4)  # flat blobs in the background: [low, high)


def class_names(design: str) -> tuple[str, ...]:
  shapes, textures = DESIGNS[design]
  return tuple(f'{shape}_{texture}' for shape in shapes for texture in textures)


def num_classes(design: str) -> int:
  shapes, textures = DESIGNS[design]
  return len(shapes) * len(textures)


def label_of(index: int, design: str = 'shapes16') -> int:
  """Classes are balanced: example `index` of a split has class `index % num_classes`."""
  return index % num_classes(design)


def _luminance(rgb: np.ndarray) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114])


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Signed distance (in object radii, negative inside) of the canonical shape."""
  if shape == 'disk':
    return np.sqrt(u * u + v * v) - 0.9
  if shape == 'square':
    return np.maximum(np.abs(u), np.abs(v)) - 0.75
  if shape == 'triangle':
    angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3  # outward edge normals
    return np.max(np.stack([float(np.cos(a)) * u + float(np.sin(a)) * v for a in angles]), axis=0) - 0.5
  if shape == 'ring':
    return np.abs(np.sqrt(u * u + v * v) - 0.68) - 0.3
  if shape == 'cross':  # a plus sign: the union of two bars
    return np.minimum(np.maximum(np.abs(u) - 0.85, np.abs(v) - 0.32), np.maximum(np.abs(u) - 0.32, np.abs(v) - 0.85))
  raise ValueError(f'unknown shape {shape!r}')


def _coverage(shape: str, x: np.ndarray, y: np.ndarray, center: np.ndarray, radius: float,
              rotation: float) -> np.ndarray:
  """Fraction of each pixel inside the shape: a one-pixel anti-aliased edge."""
  dx, dy = (x - float(center[1])) / radius, (y - float(center[0])) / radius
  cos, sin = float(np.cos(rotation)), float(np.sin(rotation))
  u, v = cos * dx + sin * dy, cos * dy - sin * dx
  return np.clip(0.5 - _shape_distance(shape, u, v) * radius, 0, 1)[..., None]


def _texture(texture: Texture, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
  """Texture in [-1, 1] at pixel coordinates (x, y): square waves with soft edges, mean ~0."""
  if texture.kind == 'flat':
    return np.zeros(x.shape, np.float32)
  low, high = texture.period
  # Python floats keep the float32 arrays float32 (NumPy 2 promotion rules).
  period = float(rng.uniform(low, high)) * scale
  if texture.orientation is None:
    angle = float(rng.uniform(0, np.pi))
  else:  # the class fixes it, up to a few degrees
    angle = float(np.deg2rad(texture.orientation + rng.uniform(-4.0, 4.0)))
  phase = [float(p) for p in rng.uniform(0, 2 * np.pi, 2)]
  a = np.cos(angle) * x + np.sin(angle) * y
  b = -np.sin(angle) * x + np.cos(angle) * y
  wave = np.sin(2 * np.pi * a / period + phase[0])
  if texture.kind == 'checks':
    wave = wave * np.sin(2 * np.pi * b / period + phase[1])
  # Sharpness ~ pixels per half period: the edge is about one pixel wide.
  return np.clip(wave * period / 2, -1, 1)


def _distinct_colour(rng: np.random.Generator, other: np.ndarray, low: float, high: float) -> np.ndarray:
  """A colour in [low, high]^3 whose luminance stands off `other`'s (best of a few draws)."""
  best = rng.uniform(low, high, 3)
  for _ in range(8):
    colour = rng.uniform(low, high, 3)
    if abs(_luminance(colour) - _luminance(other)) > abs(_luminance(best) - _luminance(other)):
      best = colour
    if abs(_luminance(best) - _luminance(other)) > 0.25:
      break
  return best


def render(label: int, rng: np.random.Generator, size: int, design: str = 'shapes16') -> np.ndarray:
  """One uint8 [size, size, 3] image of class `label` of `design`."""
  shapes, textures = DESIGNS[design]
  shape = shapes[label // len(textures)]
  texture = tuple(textures.values())[label % len(textures)]
  scale = size / _REFERENCE_SIZE
  coords = np.arange(size, dtype=np.float32) + 0.5
  y, x = np.meshgrid(coords, coords, indexing='ij')

  # Background: a colour with a faint gradient.
  background = rng.uniform(0.1, 0.9, 3).astype(np.float32)
  angle = float(rng.uniform(0, 2 * np.pi))
  ramp = ((float(np.cos(angle)) * x + float(np.sin(angle)) * y) / size - 0.5)[..., None]
  image = background + ramp * rng.uniform(-0.15, 0.15, 3).astype(np.float32)

  # Distractors: small flat blobs, mostly off the centre, that carry no class information.
  for _ in range(int(rng.integers(*_NUM_DISTRACTORS))):
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    center = rng.uniform(0.0, 1.0, 2) * size
    blob_radius = float(rng.uniform(0.05, 0.1) * size)
    # Only the blob's bounding box is touched (rendering time matters: ~20k images).
    top, left = (max(int(c - blob_radius) - 1, 0) for c in center)
    box = np.s_[top:int(center[0] + blob_radius) + 2, left:int(center[1] + blob_radius) + 2]
    blob = _coverage('disk', x[box], y[box], center, blob_radius, 0.0)
    image[box] = image[box] * (1 - blob) + colour * blob

  # The object: large and near the centre, its mean colour standing off the background;
  # the texture is a luminance pattern around that mean (flat objects show the mean itself).
  radius = float(rng.uniform(0.36, 0.46) * size)
  center = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
  coverage = _coverage(shape, x, y, center, radius, float(rng.uniform(0, 2 * np.pi)))
  base = _distinct_colour(rng, background, 0.35, 0.65).astype(np.float32)
  contrast = float(rng.uniform(0.3, 0.4))
  tint = rng.uniform(0.8, 1.0, 3).astype(np.float32)  # slightly coloured, never inverted
  pattern = _texture(texture, rng, x, y, scale)[..., None]
  foreground = base + pattern * (contrast * tint)

  image = image * (1 - coverage) + foreground * coverage
  image = image + rng.standard_normal((size, size, 1), dtype=np.float32) * 0.02  # grey sensor noise
  return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def example(seed: int, split: str, index: int, size: int, design: str = 'shapes16') -> tuple[bytes, int]:
  """JPEG bytes and label of example `index` of `split`; a pure function of its arguments."""
  label = label_of(index, design)
  # shapes16 keeps the random streams it always had; other designs draw their own.
  key = [seed, SPLIT_CODES[split], index] + ([] if design == 'shapes16' else [len(DESIGNS[design][1])])
  rng = np.random.default_rng(key)
  buffer = io.BytesIO()
  Image.fromarray(render(label, rng, size, design)).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue(), label


def examples(seed: int, split: str, start: int, stop: int, size: int, design: str) -> list[tuple[bytes, int]]:
  """Examples [start, stop) of `split` (one chunk of work for a worker process)."""
  return [example(seed, split, index, size, design) for index in range(start, stop)]


if __name__ == '__main__':
  # A worker for `textured_shapes`: render examples [start, stop) and pickle them to stdout.
  seed, split, start, stop, size, design = sys.argv[1:]
  sys.stdout.buffer.write(pickle.dumps(examples(int(seed), split, int(start), int(stop), int(size), design)))
