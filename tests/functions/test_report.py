"""``python -m devstack report``: the page built from a registry with promoted, refused
and undecided versions and a rejected upload; its charts' numbers are the manifests'."""

from __future__ import annotations

import json
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devstack.errors import DevstackError
from devstack.history import load_history
from devstack.report import render, write_report
from pipeline_core.contract import PromotionPolicy, lineage_object, stats_object
from pipeline_core.errors import DataRejectedError, TransientError
from pipeline_core.events import ObjectRef
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.registry import ModelRegistry
from pipeline_core.settings import TrainingSettings
from pipeline_core.storage import read_json
from pipeline_core.training import train, train_smoke_and_promote
from tests.functions.conftest import IRIS, WINE, processed_request, upload
from tests.functions.fakes import InMemoryStorage

SETTINGS = TrainingSettings(
    project="p", data_bucket="test-bucket", hyperparameters={"n_estimators": 10}
)
CHARTS = {"metric-over-time", "confusion-matrix", "per-class", "rows-per-upload"}


def random_labels() -> bytes:
    generator = np.random.default_rng(3)
    lines = ["a,b,c,target"]
    for _ in range(150):
        a, b, c = generator.normal(size=3)
        lines.append(f"{a},{b},{c},{generator.integers(0, 3)}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def registry() -> InMemoryStorage:
    """Promoted, refused (below the minimum, worse than the champion), promoted again
    (the champion changes), one candidate never decided, one rejected upload and one
    with rows rejected."""
    storage = InMemoryStorage("test-bucket")
    strict = replace(SETTINGS, promotion=PromotionPolicy(minimum=1.01))
    noisy = IRIS + b"5.1,3.5,oops,0.2,0\n" + IRIS.splitlines(keepends=True)[1]
    train_smoke_and_promote(storage, processed_request(storage, "raw/iris.csv", noisy), SETTINGS)
    train_smoke_and_promote(storage, processed_request(storage, "raw/again.csv", IRIS), strict)
    train_smoke_and_promote(
        storage, processed_request(storage, "raw/noise.csv", random_labels()), SETTINGS
    )
    train_smoke_and_promote(storage, processed_request(storage, "raw/wine.csv", WINE), SETTINGS)
    train(storage, processed_request(storage, "raw/pending.csv", IRIS), SETTINGS)
    tiny = upload(storage, "raw/tiny.csv", b"a,target\n1,x\n")
    with pytest.raises(DataRejectedError):
        process(storage, tiny, DatasetSchema())
    return storage


class Marks(HTMLParser):
    """Every element's attributes, by tag, and the ids of the SVG charts."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {key: value or "" for key, value in attrs}))

    def having(self, tag: str, css_class: str) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.elements
            if name == tag and css_class in attrs.get("class", "").split()
        ]


@pytest.fixture(scope="module")
def page(registry: InMemoryStorage) -> str:
    return render(load_history(registry, "f1_macro"))


def outcome_of(storage: InMemoryStorage, manifest: dict[str, Any]) -> dict[str, Any]:
    source = ObjectRef.from_request(manifest["lineage"]["source"])
    return read_json(storage, lineage_object(source))


def test_the_page_is_self_contained_with_four_charts(page: str) -> None:
    marks = Marks(page)
    assert {attrs.get("id") for tag, attrs in marks.elements if tag == "svg"} == CHARTS
    assert "<script" not in page.lower()
    assert not [attrs for _, attrs in marks.elements if "src" in attrs or "href" in attrs]
    assert page.replace("http://www.w3.org/2000/svg", "").count("http") == 0


def test_every_version_is_a_point_with_its_metric_and_decision(
    registry: InMemoryStorage, page: str
) -> None:
    storage = ModelRegistry(registry)
    points = {attrs["data-version"]: attrs for attrs in Marks(page).having("circle", "version")}
    assert set(points) == set(storage.versions())
    decisions = {}
    for version, attrs in points.items():
        manifest = storage.manifest(version)
        assert float(attrs["data-value"]) == manifest["metrics"]["f1_macro"]
        outcome = outcome_of(registry, manifest)
        expected = (
            ("promoted" if outcome["promoted"] else "refused")
            if outcome["decided"]
            else "undecided"
        )
        assert expected in attrs["class"].split()
        decisions[manifest["lineage"]["source"]["object"]] = expected
        assert outcome["reason"] in page.replace("&#x27;", "'")
    assert decisions == {
        "raw/iris.csv": "promoted",
        "raw/again.csv": "refused",
        "raw/noise.csv": "refused",
        "raw/wine.csv": "promoted",
        "raw/pending.csv": "undecided",
    }


def test_the_champion_line_steps_through_the_promoted_versions_in_order(
    registry: InMemoryStorage, page: str
) -> None:
    storage = ModelRegistry(registry)
    promoted = [
        version
        for version in reversed(storage.versions())
        if outcome_of(registry, storage.manifest(version))["promoted"]
    ]
    (line,) = Marks(page).having("polyline", "champion-line")
    assert line["data-versions"].split() == promoted
    champion = storage.champion()
    assert champion is not None and promoted[-1] == champion.version


def test_the_champions_confusion_matrix_and_per_class_numbers(
    registry: InMemoryStorage, page: str
) -> None:
    storage = ModelRegistry(registry)
    champion = storage.champion()
    assert champion is not None
    metrics = storage.manifest(champion.version)["metrics"]
    marks = Marks(page)
    labels = metrics["confusion_matrix"]["labels"]
    cells = {
        (attrs["data-actual"], attrs["data-predicted"]): int(attrs["data-count"])
        for attrs in marks.having("rect", "cell")
    }
    assert cells == {
        (actual, predicted): metrics["confusion_matrix"]["matrix"][row][column]
        for row, actual in enumerate(labels)
        for column, predicted in enumerate(labels)
    }
    for kind in ("precision", "recall"):
        bars = {
            attrs["data-class"]: float(attrs["data-value"]) for attrs in marks.having("rect", kind)
        }
        assert bars == {label: values[kind] for label, values in metrics["per_class"].items()}


def test_each_upload_shows_rows_in_out_and_rejections(registry: InMemoryStorage, page: str) -> None:
    marks = Marks(page)
    kept = {
        attrs["data-object"]: int(attrs["data-rows"]) for attrs in marks.having("rect", "rows-out")
    }
    rejected_rows = {
        (attrs["data-object"], attrs["data-reason"]): int(attrs["data-rows"])
        for attrs in marks.having("rect", "rows-rejected")
    }
    for name in (
        "raw/iris.csv",
        "raw/again.csv",
        "raw/noise.csv",
        "raw/wine.csv",
        "raw/pending.csv",
    ):
        info = registry.stat(name)
        assert info is not None
        stats = read_json(registry, stats_object(ObjectRef("test-bucket", name, info.generation)))
        assert kept[name] == stats["rows_out"]
        for reason, count in stats["rejections"].items():
            assert rejected_rows[(name, reason)] == count
    assert rejected_rows[("raw/iris.csv", "non_numeric_feature")] == 1
    assert rejected_rows[("raw/iris.csv", "duplicate")] >= 1
    assert kept["raw/tiny.csv"] == 0
    assert "rejected: too_few_rows" in page


def test_write_report_names_the_file_and_what_it_shows(
    registry: InMemoryStorage, tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "history.html"
    written = write_report(registry, "accuracy", out)
    champion = ModelRegistry(registry).champion()
    assert champion is not None
    assert written == {
        "report": str(out.resolve()),
        "bucket": "test-bucket",
        "versions": 5,
        "uploads": 6,
        "champion_version": champion.version,
    }
    text = out.read_text(encoding="utf-8")
    assert "promotion metric <code>accuracy</code>" in text
    json.dumps(written)  # the CLI prints it


def test_an_empty_registry_still_renders() -> None:
    page = render(load_history(InMemoryStorage("empty"), "f1_macro"))
    assert "No model version is registered yet" in page
    assert "No champion has been promoted yet" in page
    assert "No upload has been processed yet" in page


class UnreachableBucket(InMemoryStorage):
    def names(self, prefix: str = "") -> list[str]:
        raise TransientError("Cloud Storage call for gs://gone/models/ failed: 403 Forbidden")


def test_an_unreadable_bucket_is_a_clear_error_and_no_file(tmp_path: Path) -> None:
    out = tmp_path / "history.html"
    with pytest.raises(DevstackError, match=r"cannot read the registry in gs://gone: .*403"):
        write_report(UnreachableBucket("gone"), "f1_macro", out)
    assert not out.exists()
