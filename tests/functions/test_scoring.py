"""score_data's core without frameworks: predictions of every row or its reason, id
passthrough, one pinned champion per file, recorded rejections and idempotency."""

from __future__ import annotations

import gzip
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from pipeline_core import scoring
from pipeline_core.contract import (
    predictions_csv_object,
    predictions_object,
    scoring_lease_object,
    scoring_summary_object,
)
from pipeline_core.errors import DataRejectedError, ScoringFailedError, TransientError
from pipeline_core.events import ObjectRef, TrainingRequest
from pipeline_core.leases import LeaseHeldError, acquire, utc_now
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.registry import ModelRegistry
from pipeline_core.scoring import ScoringSpec, score
from pipeline_core.serving import LoadedModel, ModelService
from pipeline_core.settings import TrainingSettings
from pipeline_core.training import train_smoke_and_promote
from tests.functions.conftest import IRIS, WINE, reading_threads, upload
from tests.functions.fakes import InMemoryStorage
from tests.functions.test_serving import trained

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
HEADER = ",".join(FEATURES)
SPEC = ScoringSpec()


def unlabelled(data: bytes = IRIS) -> list[str]:
    """The rows of a labelled CSV without its last (target) column."""
    return [line.rsplit(",", 1)[0] for line in data.decode().splitlines()[1:]]


def csv_of(rows: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.fixture
def champion(storage: InMemoryStorage) -> str:
    version: str = trained(storage, "raw/iris.csv")["model_version"]
    return version


def read_predictions(storage: InMemoryStorage, ref: ObjectRef) -> list[dict[str, Any]]:
    parquet = pq.read_table(io.BytesIO(storage.read(predictions_object(ref)).data))
    text = pa_csv.read_csv(
        io.BytesIO(storage.read(predictions_csv_object(ref)).data),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
    )
    rows: list[dict[str, Any]] = parquet.to_pylist()
    # The CSV holds the same rows (its reader types the columns itself).
    assert text.column_names == parquet.column_names
    assert text.column("row").to_pylist() == parquet.column("row").to_pylist()
    assert text.column("reason").to_pylist() == parquet.column("reason").to_pylist()
    return rows


def test_every_row_is_scored_or_refused_with_its_row_number_and_reason(
    storage: InMemoryStorage, champion: str
) -> None:
    rows = unlabelled()
    rows[3] = "abc,1,2,3"
    rows[5] = "1,2"  # too few fields
    rows[7] = ",1,2,3"
    rows[9] = "1e39,1,1,1"  # beyond float32
    rows[11] = "inf,1,1,1"
    ref = upload(storage, "score/new.csv", csv_of(rows))

    summary = score(storage, ref, SPEC)

    assert summary["status"] == "scored"
    assert summary["model_version"] == champion
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_refused"]) == (150, 145, 5)
    assert summary["refusals"] == {
        "feature_out_of_range": 1,
        "missing_feature": 1,
        "non_finite_feature": 1,
        "non_numeric_feature": 1,
        "wrong_field_count": 1,
    }
    assert summary["refusal_examples"] == {
        "feature_out_of_range": summary["refusal_examples"]["feature_out_of_range"],
        "missing_feature": "row 8: no value for feature 'sepal length (cm)'",
        "non_finite_feature": "row 12: feature 'sepal length (cm)' is 'inf'",
        "non_numeric_feature": "row 4: feature 'sepal length (cm)' is 'abc', not a number",
        "wrong_field_count": "row 6: 2 fields where the header has 4",
    }
    assert summary["refusal_examples"]["feature_out_of_range"].startswith("row 10: ")
    predictions = read_predictions(storage, ref)
    assert [row["row"] for row in predictions] == list(range(1, 151))
    refused = {row["row"]: row["reason"] for row in predictions if row["reason"]}
    assert refused == {
        4: "non_numeric_feature",
        6: "wrong_field_count",
        8: "missing_feature",
        10: "feature_out_of_range",
        12: "non_finite_feature",
    }
    assert all(row["label"] is None and row["confidence"] is None for row in predictions[3:4])
    assert {row["model_version"] for row in predictions} == {champion}
    # The same answers as predict gives for the same rows.
    model = ModelService(ModelRegistry(storage), refresh_seconds=0).current()
    scored = [row for row in predictions if not row["reason"]]
    values = np.array(
        [[float(v) for v in rows[row["row"] - 1].split(",")] for row in scored], dtype=np.float64
    )
    answers = model.predict(values)["predictions"]
    assert [row["label"] for row in scored] == [answer["label"] for answer in answers]
    assert [row["confidence"] for row in scored] == [answer["confidence"] for answer in answers]
    for row, answer in zip(scored, answers, strict=True):
        assert {f"probability_{c}": p for c, p in answer["probabilities"].items()} == {
            key: value for key, value in row.items() if key.startswith("probability_")
        }
    assert storage.stat(scoring_lease_object(ref)) is None


def test_the_id_column_is_passed_through_and_the_target_column_ignored(
    storage: InMemoryStorage, champion: str
) -> None:
    labelled = IRIS.decode().splitlines()
    rows = [f"id-{index},{line}" for index, line in enumerate(labelled[1:])]
    rows[2] = "id-2,1,2"  # the id of a ragged record is not trusted: null
    ref = upload(storage, "score/ids.csv", csv_of(rows, f"key,{labelled[0]}"))

    summary = score(storage, ref, ScoringSpec(id_column="key"))

    assert summary["id_column"] == "key"
    predictions = read_predictions(storage, ref)
    assert [row["key"] for row in predictions[:4]] == ["id-0", "id-1", None, "id-3"]
    assert predictions[2]["reason"] == "wrong_field_count"
    assert predictions[0]["label"] == "setosa"  # the first iris row
    # Without the column in the file, the predictions simply have no id column.
    plain = upload(storage, "score/plain.csv", csv_of(unlabelled()[:5]))
    assert score(storage, plain, ScoringSpec(id_column="key"))["id_column"] is None
    assert "key" not in read_predictions(storage, plain)[0]


def test_one_champion_scores_the_whole_file_even_when_another_is_promoted_meanwhile(
    storage: InMemoryStorage, champion: str
) -> None:
    rows = unlabelled() * 20
    ref = upload(storage, "score/long.csv", csv_of(rows))

    class PromotingWhileRead(InMemoryStorage):
        """The bucket, with a new champion promoted once the first block was read."""

        def __init__(self) -> None:
            super().__init__(storage.bucket)
            self.__dict__.update(storage.__dict__)
            self.promoted: str | None = None

        @contextmanager
        def open_read(self, name: str, generation: int) -> Iterator[IO[bytes]]:
            with super().open_read(name, generation) as stream:
                if name != ref.name:
                    yield stream
                    return
                yield io.BufferedReader(_AfterFirstRead(stream, self._promote), 4096)

        def _promote(self) -> None:
            self.promoted = trained(self, "raw/other.csv", IRIS.replace(b"\n5.1,", b"\n5.2,"))[
                "model_version"
            ]

    racing = PromotingWhileRead()
    summary = score(racing, ref, SPEC, block_bytes=4096)

    assert racing.promoted not in (None, champion)
    assert summary["model_version"] == champion
    predictions = read_predictions(racing, ref)
    assert len(predictions) == len(rows)
    assert {row["model_version"] for row in predictions} == {champion}


class _AfterFirstRead(io.RawIOBase):
    def __init__(self, stream: IO[bytes], action: Any) -> None:
        self._stream = stream
        self._action = action
        self._reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._reads += 1
        if self._reads == 2:
            self._action()
        data = self._stream.read(min(len(buffer), 4096))
        buffer[: len(data)] = data
        return len(data)


def test_the_answers_do_not_depend_on_how_the_cpus_share_a_block_out(
    storage: InMemoryStorage, champion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = unlabelled() * 20
    rows[100], rows[1500], rows[2999] = "x,1,1,1", "1,2", ",1,1,1"  # refusals among the slices
    data = csv_of(rows)
    alone, shared = (
        upload(storage, "score/alone.csv", data),
        upload(storage, "score/shared.csv", data),
    )
    monkeypatch.setattr(scoring, "available_cpus", lambda: 1)
    one_cpu = score(storage, alone, SPEC, block_bytes=4096)
    calls: list[tuple[str, int]] = []
    answer = LoadedModel.computed_probabilities

    def recorded(model: LoadedModel, rows: np.ndarray[Any, Any]) -> Any:
        calls.append((threading.current_thread().name, len(rows)))
        return answer(model, rows)

    monkeypatch.setattr(LoadedModel, "computed_probabilities", recorded)
    monkeypatch.setattr(scoring, "available_cpus", lambda: 3)
    monkeypatch.setattr(scoring, "MIN_ROWS_PER_PART", 10)

    three_cpus = score(storage, shared, SPEC, block_bytes=4096)

    assert {name.split("_")[0] for name, _ in calls} == {"MainThread", "score"}
    assert max(size for _, size in calls) < 150  # a block of ~270 rows in three slices
    assert sum(size for _, size in calls) == three_cpus["rows_scored"] == len(rows) - 3
    counted = ("rows_in", "rows_scored", "refusals", "refusal_examples", "model_version")
    assert [three_cpus[key] for key in counted] == [one_cpu[key] for key in counted]
    assert read_predictions(storage, shared) == read_predictions(storage, alone)


def test_a_row_the_model_computes_no_probabilities_for_is_refused_alone(
    storage: InMemoryStorage,
) -> None:
    # A scaled linear model overflows on values near the float32 limit: NaN probabilities.
    ref = upload(storage, "raw/iris.csv", IRIS)
    processed = process(storage, ref, DatasetSchema()).to_json()
    linear = TrainingSettings(
        project="p", data_bucket=storage.bucket, model_type="logistic_regression"
    )
    champion = train_smoke_and_promote(
        storage, TrainingRequest.of_processed(ref, processed), linear
    )
    rows = unlabelled()[:6]
    rows[2] = "3e38,3e38,3e38,3e38"
    scoring_ref = upload(storage, "score/extreme.csv", csv_of(rows))

    summary = score(storage, scoring_ref, SPEC)

    assert (summary["rows_scored"], summary["refusals"]) == (5, {"not_computable": 1})
    assert summary["refusal_examples"]["not_computable"].startswith(
        "row 3: the model computes no finite probabilities"
    )
    predictions = read_predictions(storage, scoring_ref)
    assert [row["reason"] for row in predictions] == [
        None,
        None,
        "not_computable",
        None,
        None,
        None,
    ]
    assert predictions[2]["label"] is None and predictions[2]["probability_setosa"] is None
    assert {row["model_version"] for row in predictions} == {champion["model_version"]}


def test_an_output_upload_that_fails_midway_leaves_nothing_and_a_retry_scores_the_file(
    storage: InMemoryStorage, champion: str
) -> None:
    ref = upload(storage, "score/long.csv", csv_of(unlabelled() * 20))

    class FailingCsvUpload(InMemoryStorage):
        """The bucket, whose upload of the predictions CSV fails after its first block."""

        def __init__(self) -> None:
            super().__init__(storage.bucket)
            self.__dict__.update(storage.__dict__)

        @contextmanager
        def open_write(self, name: str, *, content_type: str) -> Iterator[IO[bytes]]:
            if name == predictions_csv_object(ref):
                yield _FailsAfterFirstWrite()
                return
            with super().open_write(name, content_type=content_type) as sink:
                yield sink

    with pytest.raises(TransientError, match="connection reset"):
        score(FailingCsvUpload(), ref, SPEC, block_bytes=4096)

    assert storage.names("predictions/") == []  # no output, no summary, the lease released
    summary = score(storage, ref, SPEC, block_bytes=4096)
    assert len(read_predictions(storage, ref)) == summary["rows_scored"] == 3000


class _FailsAfterFirstWrite(io.BytesIO):
    writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        if self.writes > 1:
            raise TransientError("Cloud Storage upload failed: connection reset")
        return super().write(data)


def test_columns_that_do_not_match_the_champion_are_a_recorded_rejection(
    storage: InMemoryStorage, champion: str
) -> None:
    header = "sepal length (cm),sepal width (cm),petal length,petal width (cm),notes"
    ref = upload(storage, "score/renamed.csv", csv_of(["1,2,3,4,x"], header))

    with pytest.raises(DataRejectedError) as raised:
        score(storage, ref, SPEC)

    rejection = raised.value
    assert rejection.reason_code == "mismatched_columns"
    assert "missing columns ['petal length (cm)']" in rejection.detail
    assert "unknown columns ['petal length', 'notes']" in rejection.detail
    assert champion in rejection.detail
    assert rejection.rejection_object == scoring_summary_object(ref)
    assert storage.stat(predictions_object(ref)) is None
    assert storage.stat(predictions_csv_object(ref)) is None
    # Recorded: a redelivery gets the same answer without reading the file again.
    recorded = storage.read(scoring_summary_object(ref))
    with pytest.raises(DataRejectedError, match="missing columns"):
        score(storage, ref, SPEC)
    assert storage.read(scoring_summary_object(ref)).generation == recorded.generation


def test_a_file_refused_after_its_header_leaves_no_reading_thread_behind(
    storage: InMemoryStorage, champion: str
) -> None:
    """The threads that read and parse ahead are done when scoring returns, with the
    blocks after the header never read and the refusal still held."""
    rows = unlabelled() * 40
    ref = upload(storage, "score/renamed.csv", csv_of(rows, HEADER.replace("(cm)", "(mm)")))
    before = reading_threads()
    with pytest.raises(DataRejectedError) as raised:
        score(storage, ref, SPEC, block_bytes=4096)
    assert raised.value.reason_code == "mismatched_columns"
    assert reading_threads() - before == set()


def test_scoring_before_any_champion_is_a_recorded_failure_that_says_to_train_first(
    storage: InMemoryStorage,
) -> None:
    ref = upload(storage, "score/early.csv", csv_of(unlabelled()[:3]))

    with pytest.raises(ScoringFailedError, match="train one first") as raised:
        score(storage, ref, SPEC)

    assert raised.value.details["reason"] == "no_champion"
    assert storage.names("predictions/") == [scoring_summary_object(ref)]
    # Permanent for this upload, even once a champion exists: upload the file again.
    trained(storage, "raw/iris.csv")
    with pytest.raises(ScoringFailedError, match="train one first"):
        score(storage, ref, SPEC)
    again = upload(storage, "score/early.csv", csv_of(unlabelled()[:3]))
    assert score(storage, again, SPEC)["rows_scored"] == 3


@pytest.mark.parametrize(
    "data",
    [
        b"\n\n",
        b"\x00\x01binary\x00" * 20,
        "a,b\n1,2\n".encode("utf-16"),
        b"sepal;width;petal\n1;2;3\n",
        HEADER.encode() + b",target\n",
        b"1,2,3,4\n5,6,7,8\n",
    ],
    ids=["empty", "binary", "utf16", "semicolons", "header-only", "no-header"],
)
def test_files_processing_rejects_are_rejected_alike(
    storage: InMemoryStorage, champion: str, data: bytes
) -> None:
    raw = upload(storage, "raw/bad.csv", data)
    with pytest.raises(DataRejectedError) as processing:
        process(storage, raw, DatasetSchema())
    ref = upload(storage, "score/bad.csv", data)

    with pytest.raises(DataRejectedError) as scoring:
        score(storage, ref, SPEC)

    if processing.value.reason_code == "missing_target":  # scoring needs no target
        assert scoring.value.reason_code == "mismatched_columns"
        assert "separated by semicolons: export it with commas" in scoring.value.detail
    else:
        assert scoring.value.reason_code == processing.value.reason_code
        assert scoring.value.detail == processing.value.detail
    assert storage.names("predictions/") == [scoring_summary_object(ref)]
    assert storage.read(ref.name).data == data  # the input is never changed


def test_a_gzip_upload_is_decoded_like_processing_does(
    storage: InMemoryStorage, champion: str
) -> None:
    ref = upload(storage, "score/new.csv.gz", gzip.compress(csv_of(unlabelled()[:10])))
    assert score(storage, ref, SPEC)["rows_scored"] == 10


def test_duplicate_deliveries_score_once(storage: InMemoryStorage, champion: str) -> None:
    ref = upload(storage, "score/twice.csv", csv_of(unlabelled()))
    # A delivery arriving while another holds the run is told to retry later.
    held = acquire(storage, scoring_lease_object(ref), seconds=60, clock=utc_now)
    with pytest.raises(LeaseHeldError):
        score(storage, ref, SPEC)
    held.release()
    first = score(storage, ref, SPEC)
    written = {name: storage.stat(name) for name in storage.names("predictions/")}

    second = score(storage, ref, SPEC)

    assert second == first
    assert {name: storage.stat(name) for name in storage.names("predictions/")} == written
    assert storage.stat(ref.name) is not None


def test_only_uploads_under_the_scoring_prefix_of_this_bucket_are_scored(
    storage: InMemoryStorage, champion: str
) -> None:
    from pipeline_core.errors import BadRequestError

    ref = upload(storage, "raw/iris.csv", IRIS)
    with pytest.raises(BadRequestError, match="outside score/"):
        score(storage, ref, SPEC)
    other = ObjectRef("another-bucket", "score/x.csv", 1)
    with pytest.raises(BadRequestError, match="data bucket"):
        score(storage, other, SPEC)


def test_a_champion_with_other_features_scores_its_own_columns(storage: InMemoryStorage) -> None:
    trained(storage, "raw/wine.csv", WINE)
    ref = upload(
        storage,
        "score/wine.csv",
        csv_of(unlabelled(WINE), WINE.decode().split("\n")[0].rsplit(",", 1)[0]),
    )
    summary = score(storage, ref, SPEC)
    assert summary["rows_scored"] == summary["rows_in"] == 178
    assert summary["classes"] == ["0", "1", "2"]
