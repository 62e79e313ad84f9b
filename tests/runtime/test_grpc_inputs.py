"""What the gRPC path (kserve's data plane calling ``DeftModel.predict``) accepts: the same
as the REST decoder, checked on kserve's own request objects."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.tensors import TensorSpec
from tests.runtime.helpers import kserve_argv

INPUTS = (TensorSpec("image", "FP32", (-1, 3, 4, 4)), TensorSpec("mask", "BOOL", (-1, 4)))
OUTPUTS = (TensorSpec("scores", "FP32", (-1, 2)), TensorSpec("boxes", "FP32", (-1, 4)))


@pytest.fixture(scope="module")
def km():
    with kserve_argv():
        import kserve.protocol.infer_type as infer_type

        import runtime.kserve_model as kserve_model
    return kserve_model, infer_type


def tensor(it, name, datatype, shape, data=None):
    if data is None:
        data = [0.5] * int(np.prod(shape)) if datatype != "BOOL" else [True] * int(np.prod(shape))
    return it.InferInput(name=name, shape=list(shape), datatype=datatype, data=data)


def request(it, inputs, outputs=None):
    wanted = [it.RequestedOutput(name, params) for name, params in (outputs or [])]
    return it.InferRequest("m", inputs, request_outputs=wanted or None)


def good(it):
    return [tensor(it, "image", "FP32", [2, 3, 4, 4]), tensor(it, "mask", "BOOL", [2, 4])]


def test_a_good_request_decodes_and_selects_outputs(km):
    mod, it = km
    arrays = mod._checked_inputs(request(it, good(it)), INPUTS)
    assert arrays["image"].shape == (2, 3, 4, 4) and arrays["image"].dtype == np.float32
    assert arrays["mask"].dtype == np.bool_
    assert [s.name for s in mod._requested_outputs(request(it, good(it)), OUTPUTS)] == [
        "scores", "boxes"]
    chosen = mod._requested_outputs(request(it, good(it), [("boxes", None)]), OUTPUTS)
    assert [s.name for s in chosen] == ["boxes"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda it, xs: xs + [tensor(it, "image", "FP32", [2, 3, 4, 4])], "given more than once"),
    (lambda it, xs: xs[1:], "input 'image': missing from the request"),
    (lambda it, xs: xs + [tensor(it, "extra", "FP32", [1])], "no such input"),
    (lambda it, xs: [tensor(it, "image", "FP16", [2, 3, 4, 4]), xs[1]], "datatype FP16"),
    (lambda it, xs: [tensor(it, "image", "FP32", [1, -1, 4, 4], [0.5] * 48), xs[1]],
     "non-negative integers"),
    (lambda it, xs: [tensor(it, "image", "FP32", [2, 3, 4, 5]), xs[1]], "does not match"),
    (lambda it, xs: [tensor(it, "image", "FP32", [2, 3, 4, 4], [0.5] * 95), xs[1]],
     "its data is not 96 FP32 values for shape [2, 3, 4, 4]"),
])
def test_bad_inputs_are_invalid_with_the_rest_decoders_words(km, change, message):
    mod, it = km
    from kserve.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        mod._checked_inputs(request(it, change(it, good(it))), INPUTS)


@pytest.mark.parametrize(("outputs", "message"), [
    ([("scores", None), ("scores", None)], "requested more than once"),
    ([("labels", None)], "no such output"),
    ([("scores", {"classification": 3})], "parameter 'classification' is not supported"),
])
def test_bad_output_requests_are_invalid(km, outputs, message):
    mod, it = km
    from kserve.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message):
        mod._requested_outputs(request(it, good(it), outputs), OUTPUTS)


def test_a_version_other_than_the_served_one_is_not_found(km):
    mod, it = km
    from kserve.errors import ModelNotFound

    mod._check_version(it.InferRequest("m", [], model_version="1"), "1", "m")
    mod._check_version(it.InferRequest("m", []), "1", "m")
    with pytest.raises(ModelNotFound) as info:
        mod._check_version(it.InferRequest("m", [], model_version="2"), "1", "m")
    assert info.value.reason == "model 'm' version '2' is not found"  # REST's words


@pytest.mark.parametrize(("error", "code"), [
    (lambda e: e.InvalidInput("bad"), "INVALID_ARGUMENT"),
    (lambda e: e.ModelNotFound("m"), "NOT_FOUND"),
    (lambda e: e.ModelNotReady("model 'm' is unavailable"), "UNAVAILABLE"),
    (lambda e: e.ShuttingDown("the server is shutting down"), "UNAVAILABLE"),
    (lambda e: e.QueueFull("full"), "RESOURCE_EXHAUSTED"),
    (lambda e: e.RequestTimeout("late"), "DEADLINE_EXCEEDED"),
    (lambda e: e.Unauthorized("token"), "UNAUTHENTICATED"),
    (lambda e: e.Disabled("off"), "PERMISSION_DENIED"),
    (lambda e: e.InferenceFailed("kaboom"), "INTERNAL"),
    (lambda e: e.ModelLoadError("broken"), "INTERNAL"),
])
def test_engine_errors_get_the_grpc_code_of_their_rest_status_and_rests_words(km, error, code):
    """kserve's gRPC interceptor turns its own errors into INVALID_ARGUMENT (InvalidInput),
    NOT_FOUND (ModelNotFound) and passes gRPC status exceptions through."""
    mod, _ = km
    from grpc_interceptor.exceptions import GrpcException
    from kserve.errors import InvalidInput, ModelNotFound

    from runtime import errors

    exc = error(errors)
    mapped = mod._kserve_error(exc)
    if isinstance(mapped, GrpcException):
        assert (mapped.status_code.name, mapped.details) == (code, str(exc))
    else:
        kind = {"INVALID_ARGUMENT": InvalidInput, "NOT_FOUND": ModelNotFound}[code]
        assert isinstance(mapped, kind) and mapped.reason == str(exc)
