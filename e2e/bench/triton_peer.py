"""Triton Inference Server (through PyTriton) serving the bench models: the peer Deft is
measured against.

Runs in its own virtual environment (``make peer-venv``: nvidia-pytriton needs numpy<2), so it
imports nothing from this project beyond the standard library, torch, numpy and pytriton::

    .peer-venv/bin/python e2e/bench/triton_peer.py --spec SPEC.json

``SPEC.json`` (written by ``e2e.bench.systems``)::

    {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002, "device": "cpu",
     "priority_levels": 2,
     "models": [{"name": "detector", "path": ".../model.pt2", "max_batch_size": 4,
                 "max_queue_delay_us": 0,
                 "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 96, 96]}],
                 "outputs": [{"name": "boxes", ...}, {"name": "scores", ...}]}]}

Each model is the same ``model.pt2`` the runtime serves (``torch.export.load(...).module()``,
called with its inputs as keywords) behind Triton's dynamic batcher. With
``priority_levels: 2`` every model's batcher has two levels, requests default to level 2 and a
client sends ``priority=1`` for latency-critical requests; with 0 the batcher has none.
PyTriton runs each model's function on a thread of its own; the OS shares the cores.
The tritonserver binary needs the running Python's shared library: start this script with
``LD_LIBRARY_PATH`` set to ``sysconfig.get_config_var("LIBDIR")`` (``e2e.bench.systems`` does).
SIGTERM and SIGINT stop the server and its workspace cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

NUMPY_DTYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT64": "int64",
                "INT32": "int32", "UINT8": "uint8", "BOOL": "bool"}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def make_infer(module, input_names: list[str], output_names: list[str], device: str):
    """The batch function PyTriton calls: numpy arrays by input name -> numpy by output name."""
    import numpy as np
    import torch
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            kwargs = {n: torch.from_numpy(inputs[n]).to(device) for n in input_names}
            out = module(**kwargs)
        if isinstance(out, dict):
            values = [out[n] for n in output_names] if set(out) >= set(output_names) \
                else list(out.values())
        elif isinstance(out, (tuple, list)):
            values = list(out)
        else:
            values = [out]
        return {n: v.detach().to("cpu").numpy() for n, v in zip(output_names, values, strict=True)}

    return infer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="triton_peer")
    p.add_argument("--spec", type=Path, required=True)
    args = p.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import numpy as np
    import torch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    device = spec.get("device", "cpu")
    levels = int(spec.get("priority_levels", 0))
    config = TritonConfig(http_address="127.0.0.1", http_port=spec["http_port"],
                          grpc_address="127.0.0.1", grpc_port=spec["grpc_port"],
                          metrics_port=spec["metrics_port"], allow_metrics=True,
                          exit_on_error=True, exit_timeout_secs=5, log_verbose=0)
    signal.signal(signal.SIGTERM, _interrupt)
    triton = Triton(config=config)
    for m in spec["models"]:
        program = torch.export.load(m["path"])
        if device != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
        inputs = [Tensor(name=t["name"], dtype=np.dtype(NUMPY_DTYPES[t["datatype"]]),
                         shape=tuple(t["shape"][1:])) for t in m["inputs"]]
        outputs = [Tensor(name=t["name"], dtype=np.dtype(NUMPY_DTYPES[t["datatype"]]),
                          shape=tuple(t["shape"][1:])) for t in m["outputs"]]
        batcher = DynamicBatcher(max_queue_delay_microseconds=int(m.get("max_queue_delay_us", 0)))
        if levels:
            batcher = DynamicBatcher(
                max_queue_delay_microseconds=int(m.get("max_queue_delay_us", 0)),
                priority_levels=levels, default_priority_level=levels)
        triton.bind(
            model_name=m["name"],
            infer_func=make_infer(module, [t["name"] for t in m["inputs"]],
                                  [t["name"] for t in m["outputs"]], device),
            inputs=inputs, outputs=outputs,
            config=ModelConfig(max_batch_size=int(m["max_batch_size"]), batcher=batcher),
            strict=False,
        )
    triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
