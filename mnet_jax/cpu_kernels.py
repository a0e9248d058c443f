"""The depthwise kernel gradient on CPU as one compiled pass (numba), called by XLA through its FFI.

The gradient of a 3x3 depthwise kernel is nine per-channel sums over (N, H, W) of an
input window times the output gradient. XLA:CPU runs each as a column reduction far
below memory bandwidth; scanned image by image (to stay in cache) they become thousands
of small ops per train step. This kernel reads the input and the gradient once and keeps
the nine partial sums of each channel in L1 (measured in BENCHMARKS.md).

The kernel is plain single-threaded machine code (no Python, no GIL), registered as an
XLA FFI handler and run on XLA's buffers in place. It is off the critical path of the
backward pass (only the optimizer update waits for it), so XLA can go on with the input
gradients meanwhile.
`layers.compiled_kernel_grad_applies` says where it is used.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

TARGET = 'mnet_jax_depthwise_kernel_grad'


@intrinsic
def _pointer(typingctx, address):
  """Cast an address read from XLA's structs to a pointer."""
  return types.voidptr(types.int64), lambda context, builder, sig, args: builder.inttoptr(args[0], cgutils.voidptr_t)


@numba.njit(cache=True)
def _words(address, count):
  return numba.carray(_pointer(address), (count,), np.int64)


@numba.njit(cache=True, fastmath=True, boundscheck=False)
def _accumulate(x, grad, stride, top, left, out):
  """out[i, j, c] = the sum over images and output pixels of tap (i, j)'s input pixel times grad."""
  n_images, height, width, channels = x.shape
  out_h, out_w = grad.shape[1], grad.shape[2]
  out[:] = 0.0
  image_sum = np.empty((3, 3, channels), np.float32)
  for n in range(n_images):
    image_sum[:] = 0.0  # per-image partial sums: shorter float32 accumulation chains
    for o in range(out_h):
      for p in range(out_w):
        for i in range(3):
          row = o * stride + i - top
          if row < 0 or row >= height:
            continue
          for j in range(3):
            col = p * stride + j - left
            if col < 0 or col >= width:
              continue
            for c in range(channels):  # contiguous in both operands: vectorised
              image_sum[i, j, c] += x[n, row, col, c] * grad[n, o, p, c]
    out += image_sum


# Offsets are those of xla/ffi/api/c_api.h (API 0.x) on 64-bit platforms: CallFrame {size,
# extension_start, api, ctx, stage, args {size, ext, n, types, ptrs} @40, rets {...} @80};
# Buffer {size, ext, dtype, data @24, rank, dims @40}; Metadata_Extension {base (24 bytes),
# metadata*}; Metadata {size, api_version {size, ext, major @24, minor @28}, traits @32}.
@numba.cfunc(types.voidptr(types.voidptr), cache=True)
def _handler(call_frame):
  frame = numba.carray(call_frame, (15,), np.int64)
  if frame[1] != 0:  # XLA asks for the handler's metadata: API version 0.1, no traits
    extension = _words(frame[1], 4)
    if extension[1] & 0xFFFFFFFF == 1:  # XLA_FFI_Extension_Metadata
      metadata = numba.carray(_pointer(extension[3]), (10,), np.int32)
      metadata[6], metadata[7], metadata[8] = 0, 1, 0
    return _pointer(0)
  args, rets = _words(frame[9], 3), _words(frame[14], 1)
  x_buffer, grad_buffer, params_buffer = _words(args[0], 6), _words(args[1], 6), _words(args[2], 6)
  out_buffer = _words(rets[0], 6)
  rank = x_buffer[4]  # 4, or more under vmap (seeds trained together): leading axes are independent groups
  xd, gd = _words(x_buffer[5], rank), _words(grad_buffer[5], rank)
  groups = 1
  for axis in range(rank - 4):
    groups *= xd[axis]
  n, height, width, channels = xd[rank - 4], xd[rank - 3], xd[rank - 2], xd[rank - 1]
  x = numba.carray(_pointer(x_buffer[3]), (groups, n, height, width, channels), np.float32)
  grad = numba.carray(_pointer(grad_buffer[3]), (groups, n, gd[rank - 3], gd[rank - 2], channels), np.float32)
  params = numba.carray(_pointer(params_buffer[3]), (3,), np.int32)  # broadcast alike to every group
  out = numba.carray(_pointer(out_buffer[3]), (groups, 3, 3, channels), np.float32)
  for group in range(groups):
    _accumulate(x[group], grad[group], params[0], params[1], params[2], out[group])
  return _pointer(0)


@functools.cache
def _register() -> None:
  """Registers the handler with XLA, once per process."""
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_handler.address), platform='cpu')


def depthwise_kernel_grad(x: jax.Array, grad: jax.Array, stride: int, top: int, left: int) -> jax.Array:
  """Gradient (3, 3, 1, C) of a 3x3 depthwise kernel, given float32 input x (N, H, W, C), the
  output gradient (N, OH, OW, C), the stride and the 'SAME' padding before each spatial axis."""
  if x.dtype != jnp.float32 or grad.dtype != jnp.float32 or x.ndim != 4 or grad.shape[::3] != x.shape[::3]:
    raise ValueError(f'expected float32 NHWC input and gradient, got {x.dtype}{x.shape}, {grad.dtype}{grad.shape}')
  _register()
  # Under vmap (seeds trained together) the handler gets the stacked operands and loops over the seeds
  # itself: 'sequential' sliced a copy of each seed's operands out in an XLA loop (~8% of a 1.0-63 step).
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((3, 3, x.shape[-1]), jnp.float32),
                          vmap_method='broadcast_all')
  return call(x, grad, jnp.array([stride, top, left], jnp.int32))[:, :, None, :]
