"""gptjax: train transformer language models in JAX/Flax NNX and compare their losses and optimizers."""

from gptjax import allocator

__version__ = "0.1.0"

# Before any JAX program allocates: every entry point (the command line, a sweep's children, benchmarks,
# tests) imports this package first. GPTJAX_MALLOC=off turns it off; see gptjax/allocator.py.
allocator.configure()
