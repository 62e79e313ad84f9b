"""The v2 (Open Inference Protocol) REST wire codec.

Pure functions over bytes and numpy arrays, with no web framework in sight: the HTTP layer
reads the body, calls ``decode_request`` in a worker thread, runs the request, and sends what
``encode_response`` (or ``error_body``) returns. Supports JSON tensor data and the binary
tensor extension (``inference-header-content-length``) in both directions.
"""

from runtime.codec._decode import (
    MAX_REQUEST_PARAMETER,
    UNSUPPORTED_PARAMS,
    check_input,
    check_inputs_given,
    check_output,
    decode_request,
    is_count,
    reject_unsupported,
)
from runtime.codec._encode import Binary, encode_request, encode_response, error_body
from runtime.codec._types import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    InferRequest,
    Limits,
    RequestedOutput,
)

__all__ = [
    "BINARY_CONTENT_TYPE",
    "HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "MAX_REQUEST_PARAMETER",
    "UNSUPPORTED_PARAMS",
    "Binary",
    "InferRequest",
    "Limits",
    "RequestedOutput",
    "check_input",
    "check_inputs_given",
    "check_output",
    "decode_request",
    "is_count",
    "reject_unsupported",
    "encode_request",
    "encode_response",
    "error_body",
]
