"""ModelMesh mode (``--modelmesh_port``): the runtime implements ModelMesh's model-runtime
gRPC service (``mmesh.ModelRuntime``) so that ModelMesh Serving can place InferenceServices on
Deft pods, load and unload them, and size them against the device's memory.

- ``proto/model_runtime.proto``: the wire contract; ``gen`` compiles it into ``_generated/``
  (not committed), ``stubs`` imports the result (generating it first when needed);
- ``ids``: ModelMesh model ids and the InferenceService names the priority table uses;
- ``memory``: capacity and model sizes;
- ``loading``: from ``modelPath`` to a served model (torch work, in a worker thread);
- ``models``: loads, unloads, purges and sizes, with cancellation and memory accounting;
- ``servicer``: the gRPC edge, status codes;
- ``server``: the grpc.aio server and its wiring into ``runtime.serve``.

Inference does not pass through here: ModelMesh forwards v2 gRPC requests (with the model id
in ``model_name``) to kserve's gRPC server on ``--grpc_port``, which runs them through the
engine like REST requests.
"""
