"""onnxruntime.capi: the submodules applications import by path."""
