"""The generated messages (``pb``) and service glue (``pb_grpc``) of ModelMesh's model-runtime
service. Importing this module first generates them when they are missing or older than the
``.proto`` (see ``runtime.modelmesh.gen``)."""

from __future__ import annotations

from runtime.modelmesh.gen import ensure_stubs

ensure_stubs()

from runtime.modelmesh._generated import model_runtime_pb2 as pb  # noqa: E402
from runtime.modelmesh._generated import model_runtime_pb2_grpc as pb_grpc  # noqa: E402

SERVICE = "mmesh.ModelRuntime"

__all__ = ["SERVICE", "pb", "pb_grpc"]
