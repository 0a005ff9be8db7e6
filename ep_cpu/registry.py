"""The CPU provider's kernel registry; kernels register with `@kernel(...)` beside their code."""
from ep_core.kernel import KernelRegistry

registry = KernelRegistry()
kernel = registry.register
