"""Decoding a binary image batch stays far below a request's time budget."""

from __future__ import annotations

import time

import numpy as np
import tritonclient.http as triton

from runtime.codec import HEADER_LENGTH, Limits, decode_request, encode_response
from runtime.tensors import TensorSpec


def best_of(runs: int, call) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def test_binary_image_batch_decodes_fast() -> None:
    batch = np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)
    tensor = triton.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    body, length = triton.InferenceServerClient.generate_request_body([tensor])
    headers = {HEADER_LENGTH: str(length)}
    specs = [TensorSpec("images", "FP32", (-1, 3, 224, 224))]

    request = decode_request(body, headers, specs, Limits())
    np.testing.assert_array_equal(request.inputs["images"], batch)
    seconds = best_of(5, lambda: decode_request(body, headers, specs, Limits()))
    print(f"decode 8x3x224x224 FP32 binary ({len(body) / 1e6:.1f} MB): {seconds * 1e3:.2f} ms")
    assert seconds < 0.05

    logits = np.random.default_rng(1).random((8, 1000), dtype=np.float32)
    for binary in (True, False):
        seconds = best_of(
            5, lambda b=binary: encode_response("m", "1", "r", {"y": logits}, None, b)
        )
        print(f"encode 8x1000 FP32 {'binary' if binary else 'JSON'}: {seconds * 1e3:.2f} ms")
        assert seconds < 0.05
