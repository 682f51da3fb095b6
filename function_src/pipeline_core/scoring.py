"""score_data: an upload under the scoring prefix -> the champion's predictions of it.

The file is read block by block with processing's own decoding (``csv_source``) and
cell rules (``cleaning``); the champion is loaded and verified once, exactly as predict
loads it (``serving.ModelService``), and scores every block, so one file is scored by
one model even when a new champion is promoted meanwhile. Every input row appears in
the output under its row number: with the model's answer, or with the reason it could
not be scored. The stages of consecutive blocks overlap: the next block is read and
parsed, this one scored in one slice per CPU, the previous one encoded and uploaded
(each output on a thread of its own), so memory holds a few blocks, never the file.

Outcomes are recorded once per upload generation in ``summary.json`` beside the
predictions (scored, rejected or failed), so a redelivered notification returns the
recorded outcome, and concurrent deliveries score the file once (a lease, as in
processing).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline_core import csv_source
from pipeline_core import logging as log
from pipeline_core.cleaning import (
    CELL_REASONS,
    NO_VALID_ROWS,
    ROW_WRONG_FIELD_COUNT,
    FeatureCells,
    FileRejectedError,
    arrow_numbers,
    arrow_strings,
    delimiter_hint,
    feature_cells,
    header_names,
)
from pipeline_core.contract import (
    DEFAULT_PREDICT_RUNTIME,
    DEFAULT_SCORE_PREFIX,
    DEFAULT_TARGET_COLUMN,
    DEFAULT_TIMEOUT_SECONDS,
    predictions_csv_object,
    predictions_object,
    scoring_lease_object,
    scoring_summary_object,
)
from pipeline_core.errors import (
    BadRequestError,
    DataRejectedError,
    NoChampionError,
    PreconditionFailedError,
    ScoringFailedError,
)
from pipeline_core.events import ObjectRef
from pipeline_core.leases import Clock, once, utc_now
from pipeline_core.machine import available_cpus
from pipeline_core.parquet_output import PARQUET_CONTENT_TYPE
from pipeline_core.registry import ModelRegistry
from pipeline_core.serving import FLOAT32_MAX, LoadedModel, ModelService
from pipeline_core.storage import Storage, read_json, write_json

CSV_CONTENT_TYPE = "text/csv"
PROBABILITY_PREFIX = "probability_"

# Whole-file outcomes besides processing's rejections (cleaning's reasons).
MISMATCHED_COLUMNS = "mismatched_columns"
NO_CHAMPION = "no_champion"
CHAMPION_REFUSED = "champion_refused"
# A row whose numbers exceed float32, the precision both runtimes compute in (predict
# refuses such a value too).
ROW_FEATURE_OUT_OF_RANGE = "feature_out_of_range"
# A row the model computes no finite probabilities for (a scaled linear model overflows
# on values near the float32 limit); predict answers such a request with a 422.
ROW_NOT_COMPUTABLE = "not_computable"

# 1 MiB of CSV text per block (about 60,000 rows of four features), a quarter of
# processing's: the model costs far more per row than the parsing, and the stages of a
# block overlap those of the next (read and parse, score, encode and upload), so a
# smaller block keeps them busy sooner and drains sooner; it also keeps peak memory
# lower. The per-block work in Python stays a few milliseconds.
SCORING_BLOCK_BYTES = 2**20
# Rows below which a model call is not shared out between CPUs: handing a slice to a
# thread costs tens of microseconds, a forest of 100 trees about 2 us a row.
MIN_ROWS_PER_PART = 5_000

SCORED = "scored"
REJECTED = "rejected"
FAILED = "failed"


@dataclass(frozen=True)
class ScoringSpec:
    score_prefix: str = DEFAULT_SCORE_PREFIX
    id_column: str = ""  # passed through when the file has it; empty: none
    target_column: str = DEFAULT_TARGET_COLUMN  # a labelled file may be scored; labels ignored
    runtime: str = DEFAULT_PREDICT_RUNTIME


def score(
    storage: Storage,
    ref: ObjectRef,
    spec: ScoringSpec,
    *,
    lease_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    clock: Clock = utc_now,
    block_bytes: int = SCORING_BLOCK_BYTES,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Score one upload generation once and return its summary; a later call returns
    the recorded one. A rejected file raises ``DataRejectedError``, an upload that
    cannot be scored (no champion) ``ScoringFailedError``: both recorded, both
    permanent. ``LeaseHeldError`` (transient) while another delivery is scoring it."""
    ref.check_bucket(storage.bucket)
    if not ref.name.startswith(spec.score_prefix):
        raise BadRequestError(
            f"object {ref.name!r} is outside {spec.score_prefix}; only scoring uploads are scored"
        )
    return once(
        storage,
        scoring_lease_object(ref),
        seconds=lease_seconds,
        clock=clock,
        recorded=lambda: _recorded_outcome(storage, ref),
        work=lambda: _score_once(
            storage, ref, spec, clock=clock, block_bytes=block_bytes, monotonic=monotonic
        ),
    )


def _recorded_outcome(storage: Storage, ref: ObjectRef) -> dict[str, Any] | None:
    if storage.stat(scoring_summary_object(ref)) is None:
        return None
    summary = read_json(storage, scoring_summary_object(ref))
    log.info("already scored; returning the recorded outcome", object=ref.name)
    _raise_unless_scored(ref, summary)
    return summary


def _raise_unless_scored(ref: ObjectRef, summary: dict[str, Any]) -> None:
    if summary["status"] == REJECTED:
        raise DataRejectedError(
            summary["reason"],
            rejection_object=scoring_summary_object(ref),
            detail=summary["detail"],
        )
    if summary["status"] == FAILED:
        raise ScoringFailedError(
            summary["detail"], reason=summary["reason"], summary_object=scoring_summary_object(ref)
        )


def _score_once(
    storage: Storage,
    ref: ObjectRef,
    spec: ScoringSpec,
    *,
    clock: Clock,
    block_bytes: int,
    monotonic: Callable[[], float],
) -> dict[str, Any]:
    started = monotonic()
    base = {"source": ref.to_json(), "summary_object": scoring_summary_object(ref)}
    try:
        model = pin_champion(storage, spec.runtime)
    except _UnscorableError as unscorable:
        _record(storage, ref, {**base, "status": FAILED, **unscorable.record()})
        log.error(f"cannot score {ref.name}: {unscorable.detail}", object=ref.name)
        raise ScoringFailedError(
            unscorable.detail, reason=unscorable.reason, summary_object=scoring_summary_object(ref)
        ) from None
    scorer = _Scorer(model, spec)
    base["model_version"] = model.version
    try:
        scorer.run(storage, ref, block_bytes)
    except FileRejectedError as rejection:
        record = {
            **base,
            "status": REJECTED,
            "reason": rejection.reason,
            "detail": rejection.detail,
            "rows_in": scorer.rows_in,
        }
        _record(storage, ref, record)
        log.warning("rejected scoring upload", object=ref.name, reason=rejection.reason)
        raise DataRejectedError(
            rejection.reason, rejection_object=scoring_summary_object(ref), detail=rejection.detail
        ) from None
    summary = {
        **base,
        "status": SCORED,
        **scorer.counts(),
        "runtime": model.runtime,
        "features": model.feature_names,
        "classes": scorer.class_names,
        "id_column": spec.id_column if scorer.has_id else None,
        "predictions_object": predictions_object(ref),
        "predictions_csv": predictions_csv_object(ref),
        "duration_seconds": round(monotonic() - started, 3),
        "scored_at": clock().isoformat(),
    }
    _record(storage, ref, summary)
    log.info(
        "scored upload",
        object=ref.name,
        generation=ref.generation,
        model_version=model.version,
        rows_in=summary["rows_in"],
        rows_refused=summary["rows_refused"],
        duration_seconds=summary["duration_seconds"],
    )
    return summary


def _record(storage: Storage, ref: ObjectRef, document: dict[str, Any]) -> None:
    """The first outcome recorded stays: an attempt whose lease expired while it ran
    scored the same file with... possibly another champion, and that answer was first."""
    try:
        write_json(storage, scoring_summary_object(ref), document, if_generation_match=0)
    except PreconditionFailedError:
        log.info("another attempt recorded the outcome first", outcome=scoring_summary_object(ref))


class _UnscorableError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def record(self) -> dict[str, str]:
        return {"reason": self.reason, "detail": self.detail}


def pin_champion(storage: Storage, runtime: str) -> LoadedModel:
    """The champion, loaded and verified as predict loads it; every row of the file is
    scored by it. No champion, or a refused one, is permanent for this upload."""
    service = ModelService(ModelRegistry(storage), refresh_seconds=0, runtime=runtime)
    try:
        model = service.refresh()
    except NoChampionError:
        if service.refused is None:
            raise  # the pointer changed while it was read: transient
        refused = service.refused
        raise _UnscorableError(
            CHAMPION_REFUSED,
            f"the champion {refused['model_version']} failed verification "
            f"({refused['problem']}); promote a sound model, then upload the file again",
        ) from None
    if model is None:
        raise _UnscorableError(
            NO_CHAMPION,
            "there is no champion model to score with yet: train one first (upload "
            "labelled data under raw/ and wait for its promotion), then upload this file again",
        )
    return model


@dataclass(frozen=True)
class _Columns:
    """Where the model's features (in its order) and the id column sit in the header."""

    count: int
    wanted: list[int]
    has_id: bool


def _columns(names: tuple[str, ...], model: LoadedModel, spec: ScoringSpec) -> _Columns:
    features = model.feature_names
    allowed = {*features, spec.target_column, spec.id_column} - {""}
    missing = [name for name in features if name not in names]
    unknown = [name for name in names if name not in allowed]
    if missing or unknown:
        problems = [
            f"{kind} columns {found}"
            for kind, found in (("missing", missing), ("unknown", unknown))
            if found
        ]
        extra = f" (and optionally {spec.id_column!r})" if spec.id_column else ""
        raise FileRejectedError(
            MISMATCHED_COLUMNS,
            f"the columns do not match the champion {model.version}: {'; '.join(problems)}; "
            f"it scores the features {features}{extra}{delimiter_hint(names)}",
        )
    has_id = bool(spec.id_column) and spec.id_column in names
    wanted = [names.index(name) for name in features]
    if has_id:
        wanted.append(names.index(spec.id_column))
    return _Columns(len(names), wanted, has_id)


# Row-level refusal reasons: cleaning's cell rules (same codes), then scoring's own.
REFUSAL_REASONS: tuple[str, ...] = (
    *CELL_REASONS,
    ROW_FEATURE_OUT_OF_RANGE,
    ROW_NOT_COMPUTABLE,
    ROW_WRONG_FIELD_COUNT,
)
_OUT_OF_RANGE_CODE = np.int8(REFUSAL_REASONS.index(ROW_FEATURE_OUT_OF_RANGE) + 1)
_NOT_COMPUTABLE_CODE = np.int8(REFUSAL_REASONS.index(ROW_NOT_COMPUTABLE) + 1)
_WRONG_FIELD_COUNT_CODE = np.int8(REFUSAL_REASONS.index(ROW_WRONG_FIELD_COUNT) + 1)


_OWN_REFUSAL_DETAILS = {
    ROW_FEATURE_OUT_OF_RANGE: (
        f"a feature is beyond the float32 range (+-{FLOAT32_MAX:.4g}) the model computes in"
    ),
    ROW_NOT_COMPUTABLE: (
        "the model computes no finite probabilities for these values (they overflow inside "
        "it); send values of the training data's scale"
    ),
}

# Probabilities (rows, classes), the most probable class of each row, and which rows
# have finite probabilities (``LoadedModel.computed_probabilities``).
_Computed = tuple[
    np.ndarray[Any, np.dtype[np.float64]],
    np.ndarray[Any, np.dtype[np.intp]],
    np.ndarray[Any, np.dtype[np.bool_]],
]


@dataclass
class _Scorer:
    model: LoadedModel
    spec: ScoringSpec
    rows_in: int = 0
    rows_scored: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first row of each reason
    has_id: bool = False

    @property
    def class_names(self) -> list[str]:
        return [str(name) for name in self.model.manifest["classes"]]

    def run(self, storage: Storage, ref: ObjectRef, block_bytes: int) -> None:
        with (
            storage.open_read(ref.name, ref.generation) as source,
            csv_source.Ahead("csv-read-ahead") as reader,
            csv_source.Ahead("csv-parse") as parser,
        ):
            cells, blocks = csv_source.header(
                csv_source.blocks(csv_source.decoded(source), reader, block_bytes)
            )
            columns = _columns(header_names(cells), self.model, self.spec)
            self.has_id = columns.has_id
            schema = self._schema()
            # An error before both writers closed cancels both uploads: no partial output.
            with (
                storage.open_write(
                    predictions_object(ref), content_type=PARQUET_CONTENT_TYPE
                ) as parquet_sink,
                storage.open_write(
                    predictions_csv_object(ref), content_type=CSV_CONTENT_TYPE
                ) as csv_sink,
                _Output(
                    pq.ParquetWriter(
                        parquet_sink,
                        schema,
                        compression="snappy",
                        # Dictionary pages pay off for the repetitive strings only.
                        use_dictionary=["label", "model_version", "reason"],
                    ),
                    "parquet-write",
                ) as parquet,
                _Output(
                    pa_csv.CSVWriter(
                        csv_sink, schema, write_options=pa_csv.WriteOptions(quoting_style="needed")
                    ),
                    "csv-write",
                ) as text,
                _SideBySide(available_cpus()) as side_by_side,
            ):
                for block, parsed in csv_source.parsed_ahead(
                    blocks, parser, columns.count, columns.wanted
                ):
                    table = self._score_block(block, parsed, columns, schema, side_by_side)
                    parquet.add(table)
                    text.add(table)
                if self.rows_in == 0:
                    raise FileRejectedError(NO_VALID_ROWS, "the file has a header and no data rows")
                parquet.finish()
                text.finish()

    def counts(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_scored": self.rows_scored,
            "rows_refused": self.rows_in - self.rows_scored,
            "refusals": dict(sorted(self.refusals.items())),
            "refusal_examples": dict(sorted(self.examples.items())),
        }

    def _schema(self) -> pa.Schema:
        fields = [pa.field("row", pa.int64(), nullable=False)]
        if self.has_id:
            fields.append(pa.field(self.spec.id_column, pa.string()))
        fields += [pa.field("label", pa.string()), pa.field("confidence", pa.float64())]
        fields += [pa.field(PROBABILITY_PREFIX + name, pa.float64()) for name in self.class_names]
        fields += [pa.field("model_version", pa.string()), pa.field("reason", pa.string())]
        return pa.schema(fields)

    def _score_block(
        self,
        block: csv_source.Block,
        parsed: csv_source.ParsedBlock,
        columns: _Columns,
        schema: pa.Schema,
        side_by_side: _SideBySide,
    ) -> pa.Table:
        features = len(self.model.feature_names)
        cells = feature_cells(parsed.columns, features)
        codes = cells.codes.copy()  # per parsed row: 0 scored, else 1 + REFUSAL_REASONS index
        out_of_range = (codes == 0) & (np.abs(cells.values) > FLOAT32_MAX).any(axis=0)
        codes[out_of_range] = _OUT_OF_RANGE_CODE
        scorable = codes == 0
        matrix = cells.values if scorable.all() else cells.values[:, scorable]
        probabilities, best, computable = self._predict(matrix, side_by_side)
        not_computable = np.zeros_like(scorable)
        if not computable.all():
            not_computable[np.flatnonzero(scorable)[~computable]] = True
            codes[not_computable] = _NOT_COMPUTABLE_CODE
            probabilities, best = probabilities[computable], best[computable]
        placed = _Placement.of(block, parsed, columns.count)
        first_row = self.rows_in + 1
        self._note_refusals(
            parsed,
            cells,
            codes=codes,
            own_refusals={
                ROW_FEATURE_OUT_OF_RANGE: out_of_range,
                ROW_NOT_COMPUTABLE: not_computable,
            },
            placed=placed,
            first_row=first_row,
        )
        block_codes = placed.spread_codes(codes)
        rows = len(block_codes)
        self.rows_in += rows
        scored = block_codes == 0
        self.rows_scored += int(scored.sum())
        arrays: list[pa.Array] = [
            arrow_numbers(np.arange(first_row, first_row + rows, dtype=np.int64))
        ]
        if columns.has_id:
            arrays.append(placed.spread_strings(parsed.columns.column(features)))
        arrays.append(_masked_take(arrow_strings(self.class_names), best, scored))
        arrays.append(_masked_floats(probabilities[np.arange(len(best)), best], scored))
        arrays += [
            _masked_floats(probabilities[:, index], scored)
            for index in range(len(self.class_names))
        ]
        arrays.append(pa.repeat(pa.scalar(self.model.version, pa.string()), rows))
        refused = ~scored
        arrays.append(
            _masked_take(arrow_strings(list(REFUSAL_REASONS)), block_codes[refused] - 1, refused)
        )
        return pa.Table.from_arrays(arrays, schema=schema)

    def _predict(
        self, matrix: np.ndarray[Any, np.dtype[np.float64]], side_by_side: _SideBySide
    ) -> _Computed:
        """The champion's probabilities of ``matrix`` (features, rows), as predict's."""
        if not matrix.shape[1]:  # neither runtime takes zero rows
            classes = len(self.class_names)
            return np.empty((0, classes)), np.empty(0, dtype=np.intp), np.empty(0, dtype=bool)
        return side_by_side.computed_probabilities(self.model, matrix.T)

    def _note_refusals(
        self,
        parsed: csv_source.ParsedBlock,
        cells: FeatureCells,
        *,
        codes: np.ndarray[Any, np.dtype[np.int8]],
        own_refusals: dict[str, np.ndarray[Any, np.dtype[np.bool_]]],
        placed: _Placement,
        first_row: int,
    ) -> None:
        """Counts per reason, and the row number and detail of each reason's first row;
        ``own_refusals``: the parsed rows refused by scoring's own reasons."""
        tally = np.bincount(codes, minlength=len(REFUSAL_REASONS) + 1)
        for reason, count in zip(REFUSAL_REASONS, tally[1:], strict=True):
            if count:
                self.refusals[reason] += int(count)
        if placed.ragged_rows.size:
            self.refusals[ROW_WRONG_FIELD_COUNT] += int(placed.ragged_rows.size)
            self.examples.setdefault(
                ROW_WRONG_FIELD_COUNT,
                f"row {first_row + int(placed.ragged_rows[0])}: {placed.ragged_detail}",
            )
        if not tally[1:].any():
            return
        first = cells.first_refused(parsed.columns, tuple(self.model.feature_names))
        for reason, refused in own_refusals.items():
            if refused.any():
                first[reason] = (int(np.argmax(refused)), _OWN_REFUSAL_DETAILS[reason])
        for reason, (row, detail) in first.items():
            if reason not in self.examples:
                self.examples[reason] = f"row {first_row + placed.block_row(row)}: {detail}"


class _SideBySide:
    """The rows of a block scored in up to ``parts`` slices at once: one on the calling
    thread, the others on helper threads. Both runtimes release the GIL while they
    compute (ONNX Runtime's session and scikit-learn's trees), and one session serves
    concurrent calls, so the CPUs of the instance (2 from 4 GiB) share the model's work,
    which is most of the run's; with one CPU it is a plain call."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self._helpers = ThreadPoolExecutor(max(1, parts - 1), thread_name_prefix="score")

    def __enter__(self) -> _SideBySide:
        return self

    def __exit__(self, *exception: object) -> None:
        self._helpers.shutdown(wait=True)

    def computed_probabilities(
        self, model: LoadedModel, rows: np.ndarray[Any, np.dtype[np.float64]]
    ) -> _Computed:
        parts = max(1, min(self.parts, len(rows) // MIN_ROWS_PER_PART))
        slices = np.array_split(rows, parts)
        others = [self._helpers.submit(model.computed_probabilities, part) for part in slices[1:]]
        answers = [model.computed_probabilities(slices[0])]
        answers += [other.result() for other in others]
        if len(answers) == 1:
            return answers[0]
        probabilities, best, computable = zip(*answers, strict=True)
        return np.concatenate(probabilities), np.concatenate(best), np.concatenate(computable)


class _TableWriter(Protocol):
    """``pq.ParquetWriter`` and ``pa_csv.CSVWriter`` alike."""

    def write_table(self, table: pa.Table) -> None: ...

    def close(self) -> None: ...


class _Output:
    """One output file, encoded and uploaded on a thread of its own while the next block
    is scored; blocks are written in order, one at a time, so memory holds at most the
    block being written and the one being scored, whatever the file's size."""

    def __init__(self, writer: _TableWriter, thread_name: str) -> None:
        self._writer = writer
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._last_write: Future[None] | None = None

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exception: object) -> None:
        # The sink must outlive the write in flight, even when the run failed.
        self._thread.shutdown(wait=True)

    def add(self, table: pa.Table) -> None:
        self._wait()
        self._last_write = self._thread.submit(self._writer.write_table, table)

    def finish(self) -> None:
        self._wait()
        self._writer.close()

    def _wait(self) -> None:
        if self._last_write is not None:
            last, self._last_write = self._last_write, None
            last.result()  # a failed write raises here and cancels both uploads


@dataclass(frozen=True)
class _Placement:
    """Where the parsed records of a block sit among all its records: Arrow skips the
    records with the wrong field count, which keep their row numbers all the same."""

    rows: int
    parsed_rows: np.ndarray[Any, np.dtype[np.intp]] | None  # None: every record parsed
    ragged_rows: np.ndarray[Any, np.dtype[np.intp]]
    ragged_detail: str = ""

    @classmethod
    def of(cls, block: csv_source.Block, parsed: csv_source.ParsedBlock, fields: int) -> _Placement:
        if not parsed.wrong_field_count:
            return cls(parsed.columns.num_rows, None, np.empty(0, dtype=np.intp))
        # The csv module reads the block once more: only blocks with such records.
        counts = np.array([count for _, count in csv_source.record_lines(block)])
        ragged = np.flatnonzero(counts != fields)
        detail = f"{counts[ragged[0]]} fields where the header has {fields}"
        return cls(len(counts), np.flatnonzero(counts == fields), ragged, detail)

    def block_row(self, parsed_row: int) -> int:
        """The position in the block of a parsed row."""
        return parsed_row if self.parsed_rows is None else int(self.parsed_rows[parsed_row])

    def spread_codes(self, codes: np.ndarray[Any, np.dtype[np.int8]]) -> np.ndarray[Any, Any]:
        if self.parsed_rows is None:
            return codes
        spread = np.full(self.rows, _WRONG_FIELD_COUNT_CODE, dtype=np.int8)
        spread[self.parsed_rows] = codes
        return spread

    def spread_strings(self, values: pa.ChunkedArray) -> pa.Array:
        # ChunkedArray.combine_chunks() of no chunks calls pa.array([]), importing pandas.
        combined = (
            pa.concat_arrays(values.chunks) if values.num_chunks else pa.nulls(0, values.type)
        )
        if self.parsed_rows is None:
            return combined
        present = np.zeros(self.rows, dtype=bool)
        present[self.parsed_rows] = True
        return _masked_take(combined, np.arange(len(self.parsed_rows)), present)


def _validity(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> pa.Buffer:
    return pa.py_buffer(np.packbits(mask, bitorder="little"))


def _masked_floats(
    values: np.ndarray[Any, np.dtype[np.float64]], mask: np.ndarray[Any, np.dtype[np.bool_]]
) -> pa.Array:
    """``values`` at the rows where ``mask`` is set, null elsewhere."""
    full = np.zeros(len(mask), dtype=np.float64)
    full[mask] = values
    return pa.Array.from_buffers(pa.float64(), len(mask), [_validity(mask), pa.py_buffer(full)])


def _masked_take(
    dictionary: pa.Array,
    indices: np.ndarray[Any, Any],
    mask: np.ndarray[Any, np.dtype[np.bool_]],
) -> pa.Array:
    """``dictionary[indices]`` at the rows where ``mask`` is set, null elsewhere."""
    full = np.zeros(len(mask), dtype=np.int32)
    full[mask] = indices
    positions = pa.Array.from_buffers(pa.int32(), len(mask), [_validity(mask), pa.py_buffer(full)])
    return pc.take(dictionary, positions)
