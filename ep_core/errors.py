"""Typed errors raised by the runtime. Every message names the node or value involved."""


class EPError(Exception):
    """Base class of every error the runtime raises on purpose."""


class InvalidArgument(EPError):
    """A feed or option is wrong: name, dtype, rank or shape."""


class InvalidGraph(EPError):
    """The model is malformed: cycles, dangling edges, failed checker."""


class InvalidProtobuf(EPError):
    """The bytes given are not a parseable ONNX ModelProto."""


class NoSuchFile(EPError):
    """The model path does not exist."""


class NotImplemented(EPError):  # noqa: A001 - name mirrors onnxruntime's status code
    """No provider has a kernel for a node."""


class Fail(EPError):
    """A kernel failed at run time; the message names the node and op."""


class IncompatiblePlugin(InvalidArgument):
    """A provider plugin cannot be used: ABI version mismatch, missing symbol, not a provider."""


class ResourceLimit(Fail):
    """A node would allocate more than the session's limit (`SessionOptions.max_tensor_bytes`)."""


class RunTerminated(Fail):
    """The run was cancelled: `RunOptions.terminate` was set, or its deadline passed."""
