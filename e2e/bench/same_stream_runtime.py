"""``python -m runtime`` with CUDA stream priorities off: every stream the runtime creates gets
the default priority, so latency-critical kernels no longer overtake queued batch kernels on
the GPU. Only the GPU suite (``e2e/bench/gpu.sh``) uses it, to measure what the
high-priority stream contributes; arguments are ``python -m runtime``'s."""

from __future__ import annotations

import sys


def main() -> int:
    import torch

    base = torch.cuda.Stream

    class DefaultPriorityStream(base):  # type: ignore[misc, valid-type]
        def __new__(cls, device=None, priority=0, **kwargs):  # noqa: ANN001, ARG004
            return base.__new__(cls, device=device, priority=0, **kwargs)

    torch.cuda.Stream = DefaultPriorityStream  # type: ignore[misc]
    from runtime.__main__ import main as runtime_main

    return runtime_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
