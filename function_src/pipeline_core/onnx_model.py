"""An ONNX Runtime session of a compiled model: the one place session options are chosen.

Serving (predict) and the parity check of training both run a compiled model through
``OnnxModel``, so the model that passed the check is executed exactly as it is served.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime

RUNTIME_NAME = "onnxruntime"
RUNTIME_VERSION: str = onnxruntime.__version__
# The output skl2onnx gives the class probabilities when ZipMap is disabled.
PROBABILITIES_OUTPUT = "probabilities"


def _session_options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    # One thread per call: the function server runs concurrent requests on threads and
    # ONNX Runtime releases the GIL, so requests use the cores side by side; intra-op
    # threads would only compete with them (a tree ensemble on one row takes ~10 us).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Idle worker threads spinning would burn the instance's CPU between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxModel:
    """Class probabilities from a compiled classifier (float32 input, no ZipMap)."""

    runtime = "onnx"

    def __init__(self, model_bytes: bytes) -> None:
        self._session = onnxruntime.InferenceSession(
            model_bytes, _session_options(), providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        outputs = [output.name for output in self._session.get_outputs()]
        if len(inputs) != 1 or PROBABILITIES_OUTPUT not in outputs:
            raise ValueError(
                f"the ONNX graph must take one input and give {PROBABILITIES_OUTPUT!r}; "
                f"it takes {[item.name for item in inputs]} and gives {outputs}"
            )
        self._input = inputs[0].name

    def probabilities(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``rows``: (n, features), any float dtype; one contiguous float32 copy at most."""
        matrix = np.ascontiguousarray(rows, dtype=np.float32)
        (result,) = self._session.run([PROBABILITIES_OUTPUT], {self._input: matrix})
        return np.asarray(result)
