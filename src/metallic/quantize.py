"""Load-time quantization of float weights (``metallic.load(folder, quantize="q8_0" | "q4_0")``).

Every 2-D float weight (F32 / F16 / BF16) whose rows are a multiple of 32 long is quantized by
the native kernel (GGML reference rounding, bit-exact with llama.cpp's reference quantizers) into
new memory; 1-D tensors (norms, biases) stay as they are. The measured logit drift against the
unquantized model is recorded in tests/python/test_quantize.py.
"""

from __future__ import annotations

from .dtypes import DType, tensor_nbytes
from .errors import InvalidArgument

TARGETS: dict[str, DType] = {"q8_0": DType.Q8_0, "q4_0": DType.Q4_0}
_FLOATS = frozenset({DType.F32, DType.F16, DType.BF16})


def check_target(quantize: object) -> DType | None:
    """Validates the ``quantize`` argument; returns the target type or None (no quantization)."""
    if quantize is None:
        return None
    if not isinstance(quantize, str) or quantize.lower() not in TARGETS:
        raise InvalidArgument(
            f"[load] quantize: expected None or one of {', '.join(TARGETS)}, got {quantize!r}"
        )
    return TARGETS[quantize.lower()]


def quantize_weights(weights: dict, target: DType, *, threads: int = 2) -> tuple[dict, int]:
    """Quantizes the eligible weights of a loader bundle.

    Args:
        weights: canonical name -> (DType, numpy-order shape, uint8 bytes), as ``bundle.weights``.
        target: DType.Q8_0 or DType.Q4_0.
        threads: worker threads for the native quantizer.

    Returns:
        (a new dict in the same form, the number of tensors quantized).
    """
    from . import _core

    out, n = {}, 0
    for name, (dt, shape, data) in weights.items():
        if DType(dt) in _FLOATS and len(shape) == 2 and shape[1] % 32 == 0:
            rows, cols = int(shape[0]), int(shape[1])
            q = _core.kernels.quantize(int(dt), data, rows, cols, int(target), threads, name)
            if q.nbytes != tensor_nbytes(target, (rows, cols), where=name):  # native contract
                raise InvalidArgument(f"[quantize] {name}: unexpected output size {q.nbytes}")
            out[name] = (target, shape, q)
            n += 1
        else:
            out[name] = (dt, shape, data)
    return out, n
