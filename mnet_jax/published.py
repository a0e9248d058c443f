"""Published MobileNet V1 ImageNet results, as data with their sources, for overlays and comparisons.

Accuracies and the paper's printed Mult-Adds/params are facts copied from the sources below.
Rows built for plotting take Mult-Adds and params from `mnet_jax.cost` (the architecture
arithmetic), never from the TF-slim page, whose Mult-Adds column is inconsistent with the
architecture for some models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mnet_jax import cost, report

PAPER = 'Howard et al. 2017 (MobileNets, arXiv:1704.04861)'
SLIM = 'TF-slim released checkpoints (tensorflow/models, research/slim/nets/mobilenet_v1.md)'
DATASET = 'imagenet2012'


@dataclasses.dataclass(frozen=True)
class Published:
  """One published model: accuracy in percent as printed; Mult-Adds/params in millions where printed."""

  variant: str
  alpha: float
  resolution: int
  top1: float
  top5: float | None
  source: str
  table: str
  num_classes: int
  printed_mult_adds: float | None = None
  printed_params: float | None = None

  @property
  def model(self) -> str:
    return report.model_name(self.alpha, self.resolution, self.variant)


# The paper's models, each once: (variant, alpha, resolution) -> (top-1 %, Million Mult-Adds, Million params).
_PAPER_MODELS = {
    ('separable', 1.0, 224): (70.6, 569, 4.2),
    ('separable', 0.75, 224): (68.4, 325, 2.6),
    ('separable', 0.5, 224): (63.7, 149, 1.3),
    ('separable', 0.25, 224): (50.6, 41, 0.5),
    ('separable', 1.0, 192): (69.1, 418, 4.2),
    ('separable', 1.0, 160): (67.2, 290, 4.2),
    ('separable', 1.0, 128): (64.4, 186, 4.2),
    ('conv', 1.0, 224): (71.7, 4866, 29.3),
    ('shallow', 1.0, 224): (65.3, 307, 2.9),
}
# Which of those models each of the paper's tables lists, in the paper's order.
PAPER_TABLES = {
    'Table 4': (('conv', 1.0, 224), ('separable', 1.0, 224)),
    'Table 5': (('separable', 0.75, 224), ('shallow', 1.0, 224)),
    'Table 6': tuple(('separable', a, 224) for a in (1.0, 0.75, 0.5, 0.25)),
    'Table 7': tuple(('separable', 1.0, r) for r in (224, 192, 160, 128)),
}

# The released checkpoints (1001 classes, background included): (alpha, resolution) -> (top-1 %, top-5 %).
_SLIM_GRID = {
    (1.0, 224): (70.9, 89.9), (1.0, 192): (70.0, 89.2), (1.0, 160): (68.0, 87.7), (1.0, 128): (65.2, 85.8),
    (0.75, 224): (68.4, 88.2), (0.75, 192): (67.2, 87.3), (0.75, 160): (65.3, 86.0), (0.75, 128): (62.1, 83.9),
    (0.5, 224): (63.3, 84.9), (0.5, 192): (61.7, 83.6), (0.5, 160): (59.1, 81.9), (0.5, 128): (56.3, 79.4),
    (0.25, 224): (49.8, 74.2), (0.25, 192): (47.7, 72.3), (0.25, 160): (45.5, 70.3), (0.25, 128): (41.5, 66.3),
}


def paper_results(table: str | None = None) -> list[Published]:
  """The paper's results: one table ('Table 4'..'Table 7'), or every model once when `table` is None."""
  if table is None:
    return [_paper(key, ', '.join(t for t, keys in PAPER_TABLES.items() if key in keys)) for key in _PAPER_MODELS]
  if table not in PAPER_TABLES:
    raise ValueError(f'unknown table {table!r}; expected one of {", ".join(PAPER_TABLES)}')
  return [_paper(key, table) for key in PAPER_TABLES[table]]


def _paper(key: tuple[str, float, int], table: str) -> Published:
  top1, mult_adds, params = _PAPER_MODELS[key]
  return Published(*key, top1=top1, top5=None, source=PAPER, table=table, num_classes=1000,
                   printed_mult_adds=mult_adds, printed_params=params)


def slim_results() -> list[Published]:
  """The released TF-slim checkpoint grid (α × resolution), single center crop."""
  return [Published('separable', alpha, resolution, top1, top5, SLIM, 'checkpoint grid', num_classes=1001)
          for (alpha, resolution), (top1, top5) in _SLIM_GRID.items()]


def as_rows(results: list[Published]) -> list[dict[str, Any]]:
  """Published results as sweep-style result rows (fractions; Mult-Adds/params from the architecture)."""
  rows = []
  for p in results:
    model_cost = cost.model_cost(p.alpha, p.resolution, p.variant, p.num_classes)
    short_source = 'paper' if p.source == PAPER else 'slim'
    rows.append({
        'name': f'{short_source}: {p.model}', 'alpha': p.alpha, 'resolution': p.resolution,
        'rho': p.resolution / 224, 'variant': p.variant, 'dataset': DATASET,
        'mult_adds': model_cost.mult_adds, 'params': model_cost.params,
        'top1': p.top1 / 100, 'top5': None if p.top5 is None else p.top5 / 100,
        'latency_ms': None, 'infer_img_s': None, 'train_img_s': None, 'wall_s': None, 'steps': None,
        'status': 'done', 'error': None, 'source': p.source})
  return rows
