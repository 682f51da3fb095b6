"""``python -m devstack demo``: the whole product in one command.

Starts the stack, uploads scikit-learn's iris data set as CSV, follows the run, shows
the champion and one prediction, writes the model history page (``report.html`` in the
state folder) and stops the stack, on failure and Ctrl-C too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.config import StackConfig
from devstack import report, runs, stack
from devstack.stack import Progress


def write_iris_csv(path: Path, target_column: str) -> dict[str, Any]:
    """Write iris as CSV; return one row's features for a sample prediction."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.frame
    # The species as the class values, so predictions answer "setosa", not 0.
    frame["target"] = iris.target_names[iris.target]
    # "sepal length (cm)" -> "sepal_length_cm": plain names read well in requests.
    frame.columns = [column.replace(" (cm)", "_cm").replace(" ", "_") for column in frame.columns]
    frame = frame.rename(columns={"target": target_column})
    frame.to_csv(path, index=False)
    sample: dict[str, Any] = frame.drop(columns=[target_column]).iloc[0].to_dict()
    return sample


def run_demo(
    config: StackConfig, stack_file: Path, state_dir: Path, progress: Progress
) -> dict[str, Any]:
    """Return the champion's version and metrics and the sample prediction."""
    progress("1/4 starting the local stack")
    state = stack.up(config, stack_file, state_dir, progress)
    try:
        data = state_dir / "iris.csv"
        sample = write_iris_csv(data, config.target_column)
        progress(f"2/4 uploading {data.name} and following the run")
        summary = runs.upload_and_follow(
            state, data, name="iris.csv", timeout=runs_timeout(config), progress=progress
        )
        progress(
            f"3/4 champion {summary.get('champion_version')} "
            f"(this run's model {summary.get('model_version')}, promoted: "
            f"{summary.get('promoted')}), metrics {json.dumps(summary.get('metrics'))}"
        )
        prediction = runs.predict(state, {"instances": [sample]})
        progress(f"4/4 prediction for {json.dumps(sample)}: {json.dumps(prediction)}")
        written = report.write_report(
            report.local_storage(state), config.promotion.metric, state_dir / report.REPORT_NAME
        )
        progress(f"model history written to {written['report']} (open it in a browser)")
    finally:
        progress("stopping the local stack")
        stack.down(state_dir, progress)
    return {
        "champion_version": summary.get("champion_version"),
        "metrics": summary.get("metrics"),
        "prediction": prediction,
        "report": written["report"],
    }


def runs_timeout(config: StackConfig) -> float:
    """Long enough for the slowest stage's own timeout, as in the cloud."""
    return float(
        sum(config.function(key).timeout_seconds for key in ("process_data", "train_model"))
    )
