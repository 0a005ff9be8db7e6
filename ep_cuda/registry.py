"""The CUDA provider's kernel registry; wrappers register with `@kernel(...)` beside their code.

Same API as the CPU provider's (`ep_core.kernel.KernelRegistry.register`): op types, domain,
version range, `types` restricting schema type constraints (other dtypes fall back to the CPU) and
`host_inputs` / `host_outputs` for values read or produced in host memory.
"""
from ep_core.kernel import KernelRegistry

registry = KernelRegistry()
kernel = registry.register
