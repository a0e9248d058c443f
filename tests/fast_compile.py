"""XLA:CPU options for the tests' programs, most of which run once or a few times, so that compiling is most of
their cost: without LLVM's optimisations, and with XLA's earlier (LLVM IR) fusion emitters instead of its MLIR
ones (compile times measured in BENCHMARKS.md, sessions 16 and 17). Without JAX imports: `conftest` sets these
before JAX starts."""

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False}


def xla_flags(options: dict) -> list[str]:
  """`options` as XLA_FLAGS words."""
  return [f'--{name}={str(value).lower()}' for name, value in options.items()]
