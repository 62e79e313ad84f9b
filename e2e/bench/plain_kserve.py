"""A plain kserve.ModelServer serving the same models the usual way: one ``kserve.Model`` per
model whose ``predict`` runs the torch forward pass. The baseline Deft is compared with.

``python -m e2e.bench.plain_kserve --model_dir DIR --http_port N --grpc_port M [--device cuda]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--http_port", type=int, required=True)
    p.add_argument("--grpc_port", type=int, required=True)
    p.add_argument("--device", default="cpu")
    args, _ = p.parse_known_args()
    sys.argv = [sys.argv[0], "--http_port", str(args.http_port), "--grpc_port", str(args.grpc_port)]

    import kserve
    import torch
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class TorchModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            program = torch.export.load(str(path))
            if args.device != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, args.device)
            self.module = program.module()
            self.ready = True

        def predict(self, payload: InferRequest, headers=None, response_headers=None):
            first = payload.inputs[0]
            x = torch.from_numpy(first.as_numpy()).to(args.device)
            with torch.inference_mode():
                out = self.module(**{first.name: x})
            if isinstance(out, torch.Tensor):
                out = (out,)
            elif isinstance(out, dict):
                out = tuple(out.values())
            outputs = []
            for i, t in enumerate(out):
                arr = t.detach().cpu().numpy()
                o = InferOutput(f"output_{i}", list(arr.shape), "FP32")
                o.set_data_from_numpy(arr, binary_data=True)
                outputs.append(o)
            return InferResponse(payload.id or "", self.name, outputs)

    models = [TorchModel(d.name, d / "model.pt2") for d in sorted(args.model_dir.iterdir())
              if (d / "model.pt2").is_file()]
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port,
                       enable_grpc=False).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
