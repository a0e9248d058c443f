"""The fused BatchNorm + activation against flax's nn.BatchNorm followed by the activation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mnet_jax.batch_norm import BatchNormAct, batch_norm_act_train

jax.config.update('jax_default_matmul_precision', 'highest')


class Reference(nn.Module):
  activation: str
  train: bool

  @nn.compact
  def __call__(self, y):
    y = nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-3, name='bn')(y)
    return {'relu6': nn.relu6, 'relu': nn.relu}[self.activation](y)


class Fused(nn.Module):
  activation: str
  train: bool

  @nn.compact
  def __call__(self, y):
    return BatchNormAct(use_running_average=not self.train, activation=self.activation, momentum=0.9,
                        epsilon=1e-3, name='bn')(y)


def _data(shape=(3, 5, 4, 6)):
  ky, kw = jax.random.split(jax.random.PRNGKey(0))
  y = 4.0 * jax.random.normal(ky, shape) + 1.0
  params = {'bn': {'scale': jnp.linspace(-1.0, 6.0, shape[-1]), 'bias': jnp.linspace(-1.0, 2.0, shape[-1])}}
  stats = {'bn': {'mean': jnp.linspace(-0.5, 0.5, shape[-1]), 'var': jnp.linspace(0.5, 2.0, shape[-1])}}
  return y, params, stats, jax.random.normal(kw, shape)  # scales up to 6: both clip edges are hit


@pytest.mark.parametrize('activation', ['relu6', 'relu'])
def test_training_mode_matches_flax(activation):
  y, params, stats, cotangent = _data()

  def run(module):
    def loss(p, y):
      out, updates = module.apply({'params': p, 'batch_stats': stats}, y, mutable=['batch_stats'])
      return jnp.sum(out * cotangent), (out, updates['batch_stats'])
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, y)

  (grads, grad_y), (out, new_stats) = run(Fused(activation, True))
  (want_grads, want_grad_y), (want_out, want_stats) = run(Reference(activation, True))
  assert 0 < float(jnp.mean(out == 0)) < 1 and (activation == 'relu' or bool(jnp.any(out == 6.0)))
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad_y, want_grad_y, rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves((grads, new_stats)), jax.tree.leaves((want_grads, want_stats)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('activation', ['relu6', 'relu'])
def test_eval_mode_matches_flax_and_variables_are_flax_s(activation):
  y, params, stats, _ = _data()
  got = Fused(activation, False).apply({'params': params, 'batch_stats': stats}, y)
  want = Reference(activation, False).apply({'params': params, 'batch_stats': stats}, y)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  init = lambda m: m.init(jax.random.PRNGKey(0), y)  # noqa: E731
  for a, b in zip(jax.tree.leaves(init(Fused(activation, True))), jax.tree.leaves(init(Reference(activation, True))),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(init(Fused(activation, True))) == jax.tree.structure(init(Reference(activation, True)))


def test_hand_written_gradient_matches_finite_differences():
  """All three outputs (activation, mean, variance) carry gradient, checked numerically in float64."""
  with jax.enable_x64(True):
    y, params, _, _ = _data((2, 3, 3, 4))
    # Keep pre-activations away from the clip edges, where finite differences straddle a kink.
    y = jnp.asarray(y, jnp.float64)
    scale, bias = jnp.asarray(params['bn']['scale'], jnp.float64), jnp.full((4,), 20.0, jnp.float64)
    fn = lambda y, s, b: batch_norm_act_train(y, s, b, 1e-3, float('inf'))  # noqa: E731
    check_grads(fn, (y, scale, bias), order=1, modes=['rev'], atol=1e-6, rtol=1e-6)
