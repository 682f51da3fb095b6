"""Compile a fitted candidate to ONNX and prove it answers as scikit-learn does.

A candidate is served through ONNX Runtime only when the compiled graph passed the
parity check on the candidate's held-out rows: identical labels and class probabilities
within ``PARITY_TOLERANCE``. Otherwise the manifest records why, and predict serves the
joblib artifact; answers never silently differ between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import skl2onnx
from skl2onnx import to_onnx
from sklearn.pipeline import Pipeline

from pipeline_core.onnx_model import RUNTIME_NAME, RUNTIME_VERSION, OnnxModel

# float32 inference against scikit-learn's float64: tree thresholds and sums of 100
# trees agree to ~1e-6 (measured: at most 7e-7 on the bundled data sets).
PARITY_TOLERANCE = 1e-5
# Pinned so that a library upgrade cannot silently change what the runtime must support.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}

COMPILED = "compiled"
NOT_CONVERTIBLE = "not_convertible"
FAILED_PARITY = "failed_parity"


@dataclass(frozen=True)
class Compilation:
    """The outcome recorded in the manifest's ``onnx`` entry; ``model`` when compiled."""

    status: str
    detail: dict[str, Any]
    model: bytes | None = None

    def manifest_entry(self) -> dict[str, Any]:
        return {"status": self.status, **self.detail}


def compile_candidate(
    estimator: Any, test_features: np.ndarray[Any, Any], classes: list[str]
) -> Compilation:
    """Convert, then check parity on ``test_features`` (the held-out split)."""
    converter = {"converter": f"skl2onnx {skl2onnx.__version__}", "opset": dict(TARGET_OPSET)}
    try:
        model = _convert(estimator, test_features.shape[1])
        compiled = OnnxModel(model)
    except Exception as error:  # the converter raises many types; all mean "cannot"
        reason = f"{type(error).__name__}: {error}"
        return Compilation(NOT_CONVERTIBLE, {**converter, "reason": reason})
    parity = _parity(compiled, estimator, test_features, classes)
    runtime = {"runtime": f"{RUNTIME_NAME} {RUNTIME_VERSION}", "parity": parity}
    if not parity["passed"]:
        return Compilation(FAILED_PARITY, {**converter, **runtime, "reason": parity["reason"]})
    return Compilation(COMPILED, {**converter, **runtime}, model)


def _convert(estimator: Any, feature_count: int) -> bytes:
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    onnx_model = to_onnx(
        estimator,
        np.zeros((1, feature_count), dtype=np.float32),
        # Probabilities as one plain tensor: ZipMap's list of dicts costs per-row work.
        options={id(final): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    return bytes(onnx_model.SerializeToString())


def _parity(
    compiled: OnnxModel,
    estimator: Any,
    features: np.ndarray[Any, Any],
    classes: list[str],
) -> dict[str, Any]:
    expected = estimator.predict_proba(features)
    actual = compiled.probabilities(features)
    report: dict[str, Any] = {"rows": len(features), "tolerance": PARITY_TOLERANCE}
    if actual.shape != expected.shape:
        return {
            **report,
            "passed": False,
            "reason": f"probabilities have shape {list(actual.shape)}, "
            f"scikit-learn gives {list(expected.shape)}",
        }
    label_of = np.asarray(classes, dtype=object)
    onnx_labels = label_of[actual.argmax(axis=1)]
    mismatched = int(np.count_nonzero(onnx_labels != estimator.predict(features)))
    difference = float(np.abs(actual - expected).max()) if len(features) else 0.0
    report.update(labels_identical=mismatched == 0, max_abs_probability_difference=difference)
    if mismatched:
        reason = f"{mismatched} of {len(features)} held-out labels differ from scikit-learn's"
    elif difference > PARITY_TOLERANCE:
        reason = f"probabilities differ by up to {difference:.2e} (tolerance {PARITY_TOLERANCE})"
    else:
        return {**report, "passed": True}
    return {**report, "passed": False, "reason": reason}
