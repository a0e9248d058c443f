"""XLA:CPU options for the tests' programs, most of which run once or a few times, so that compiling is most of
their cost: without LLVM's optimisations, and with XLA's earlier (LLVM IR) fusion emitters instead of its MLIR
ones (BENCHMARKS.md, session 17). MobileNet 0.25's `init` (its random draws) took 7.6 s to compile at XLA's
defaults, 2.5 s at level 0 and 1.7-1.9 s with both (the tiny run's train step: 3.7-4.2 s at level 0, 2.8 s with
both); the init took 14 s run eagerly. Without JAX imports: `conftest` sets these before JAX starts."""

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False}


def xla_flags(options: dict) -> list[str]:
  """`options` as XLA_FLAGS words."""
  return [f'--{name}={str(value).lower()}' for name, value in options.items()]
