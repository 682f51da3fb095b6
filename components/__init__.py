"""The Pulumi components of the pipeline.

They share the contract with the functions (``pipeline_core.contract``: bucket layout,
environment names, defaults), which lives inside the deployed package so that the
archive stays self-contained. The program runs from the repository root with only the
root on ``sys.path``; this is the one place that makes ``function_src`` importable too.
"""

import sys
from pathlib import Path

_FUNCTION_SOURCE = str(Path(__file__).resolve().parent.parent / "function_src")
if _FUNCTION_SOURCE not in sys.path:
    sys.path.append(_FUNCTION_SOURCE)
