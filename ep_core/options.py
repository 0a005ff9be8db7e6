"""Session and run options with onnxruntime's names and meanings."""
from __future__ import annotations

import enum
from typing import Any


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class SessionOptions:
    """Knobs read when a session is built (same attribute names as onnxruntime)."""

    def __init__(self) -> None:
        self.graph_optimization_level: GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.execution_mode: ExecutionMode = ExecutionMode.ORT_SEQUENTIAL
        self.intra_op_num_threads: int = 0
        self.inter_op_num_threads: int = 0
        self.enable_profiling: bool = False
        self.profile_file_prefix: str = "ep_core_profile"
        self.optimized_model_filepath: str = ""
        self.log_severity_level: int = 2
        self.log_verbosity_level: int = 0
        self.logid: str = ""
        self.enable_mem_pattern: bool = True
        self.enable_cpu_mem_arena: bool = True
        self.use_deterministic_compute: bool = False
        self.disabled_optimizers: list[str] = []
        # ep_core's own: the largest tensor one node may create (0: no limit); a server taking
        # untrusted models sets it so an allocation bomb is refused before anything is allocated.
        self.max_tensor_bytes: int = 0
        self._config: dict[str, str] = {}

    def add_session_config_entry(self, key: str, value: str) -> None:
        self._config[key] = str(value)

    def get_session_config_entry(self, key: str) -> str:
        return self._config[key]

    @property
    def config(self) -> dict[str, str]:
        return dict(self._config)


class RunOptions:
    """Per-run knobs (same attribute names as onnxruntime)."""

    def __init__(self) -> None:
        self.log_severity_level: int = 2
        self.log_verbosity_level: int = 0
        self.run_tag: str = ""
        self.terminate: bool = False
        self.only_execute_path_to_fetches: bool = False
        # ep_core's own: stop the run with RunTerminated after this many seconds (0: no deadline).
        self.timeout_s: float = 0.0
        self._config: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: Any) -> None:
        self._config[key] = str(value)

    def get_run_config_entry(self, key: str) -> str:
        return self._config[key]
