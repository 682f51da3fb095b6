"""Bytes of an upload -> the header and record-aligned blocks of UTF-8 CSV text.

Everything about byte decoding lives here: gzip, byte order marks, UTF-16 and binary
sniffing, UTF-8 validation and the line numbers that rejection examples name. The
cleaning rules (``cleaning``) never see bytes, only the columns of one block.

A block is cut after a line break outside quotes (an even number of quote characters
since the block started), so every block parses on its own: the same rules can run on
blocks read by different workers.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import itertools
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipeline_core.cleaning import EMPTY, NOT_CSV, FileRejectedError

GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF8_BOM = b"\xef\xbb\xbf"
# 4 MiB of CSV text per block: about 110,000 rows of five numeric columns. Large enough
# that the per-block work in Python (a few dozen vectorized calls) costs nothing next to
# the parsing, small enough that a block's strings and their float copies stay a few
# tens of MB.
DEFAULT_BLOCK_BYTES = 4 * 2**20
FIRST_BLOCK_BYTES = 256 * 2**10
# A record longer than this many blocks is a runaway quote or not CSV at all.
MAX_RECORD_BLOCKS = 8
PARSE_CHUNK_BYTES = 2**20
# Compressed bytes read from the storage at a time under gzip.
GZIP_READ_BYTES = 4 * 2**20

Prepared = TypeVar("Prepared")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Block:
    """Whole records of CSV text; ``first_line`` is the line number of its first byte."""

    data: bytes
    first_line: int

    def line_breaks(self) -> int:
        """Line breaks as Python's universal newlines count them (CRLF is one)."""
        data = self.data
        if b"\r" not in data:
            return data.count(b"\n")
        return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


@dataclass(frozen=True)
class ParsedBlock:
    columns: pa.Table  # the requested columns: strings, or float64 (``parse``)
    wrong_field_count: int  # records skipped for a field count other than the header's


def decoded(source: IO[bytes]) -> IO[bytes]:
    """The bytes of a plain or gzip-compressed upload, decompressed as they are read
    (``blocks`` then checks the text and drops a byte order mark)."""
    # As much as ``blocks`` reads first: a plain upload's first block is this head, with
    # no request of its own.
    head = source.read(FIRST_BLOCK_BYTES)
    if head[:2] == GZIP_MAGIC:
        # gzip reads 128 KiB at a time; each read of the storage's is a request.
        buffered = io.BufferedReader(_Prefixed(head, source), buffer_size=GZIP_READ_BYTES)
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    # A plain upload is read as the storage hands it over: through a BufferedReader
    # every byte was copied once more (0.1 s of the main thread at 360 MB).
    return _Prefixed(head, source)  # type: ignore[return-value]


class Ahead:
    """A thread that works one step ahead of its caller: it reads the next chunk, or
    prepares the next block, while the caller works on this one. Leaving its ``with``
    waits for that thread.

    The thread belongs to a ``with`` in a plain function, never to a generator. A
    generator left suspended (a rejection raised while it still had blocks to give) is
    closed whenever the garbage collector reaches it, on whichever thread happens to
    run the collector. Joining a thread from there can deadlock: the collector may run
    inside ``threading``'s own bookkeeping, holding the lock that ``join`` takes. That
    hung a CI run for its whole timeout.
    """

    def __init__(self, name: str) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def submit(self, work: Callable[..., Result], *args: Any) -> Future[Result]:
        return self._thread.submit(work, *args)


def blocks(
    stream: IO[bytes], reader: Ahead, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[Block]:
    """Record-aligned, UTF-8-validated blocks, growing from FIRST_BLOCK_BYTES to about
    ``block_bytes`` each; ``reader`` reads the next chunk of ``stream`` ahead."""
    carry = b""
    offset = 0  # of ``carry`` in the decoded stream, for error messages
    line = 1
    first = True
    for read in _read_ahead(stream, _growing(block_bytes), reader):
        chunk = read
        if first:
            first = False
            if chunk[:2] in UTF16_BOMS:
                raise FileRejectedError(NOT_CSV, "the file is UTF-16 text; save it as UTF-8")
            if chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM) :]
        if not chunk:
            if carry:
                _validate(carry, offset)
                yield Block(carry, line)
            return
        block, carry = _cut(carry, chunk, block_bytes)
        if block is None:
            continue
        _validate(block, offset)
        numbered = Block(block, line)
        yield numbered
        line += numbered.line_breaks()
        offset += len(block)


def _cut(carry: bytes, chunk: bytes, block_bytes: int) -> tuple[bytes | None, bytes]:
    """(the whole records of ``carry`` + ``chunk``, or None if they hold none yet; the
    rest). The common chunk, without quotes, is cut at its last line feed and copied
    once; one with quotes is cut after a line feed outside them (``_record_end``)."""
    end = chunk.rfind(b"\n")
    if end >= 0 and b'"' not in chunk and carry.count(b'"') % 2 == 0:
        return b"".join((carry, memoryview(chunk)[: end + 1])), chunk[end + 1 :]
    data = carry + chunk
    cut = _record_end(data)
    if cut < 0 and len(data) < MAX_RECORD_BLOCKS * block_bytes:
        return None, data
    if cut < 0:
        # Quote characters inside unquoted fields ('5" screen') make the count
        # odd with no runaway quote at all: both parsers read them literally.
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if cut == 0:
            raise FileRejectedError(
                NOT_CSV,
                f"a line is longer than {len(data):,} bytes: not CSV text, "
                "or a quoted field is never closed",
            )
    return data[:cut], data[cut:]


def header(source: Iterator[Block]) -> tuple[list[str], Iterator[Block]]:
    """The header cells (the first non-blank record) and the blocks of records after it."""
    for block in source:
        lines = io.StringIO(block.data.decode("utf-8"), newline="").readlines()
        reader = csv.reader(iter(lines))
        try:
            cells = next((row for row in reader if row), None)
        except csv.Error as error:
            raise FileRejectedError(NOT_CSV, f"the file is not valid CSV: {error}") from None
        if cells is not None:
            consumed = len("".join(lines[: reader.line_num]).encode())
            rest = Block(block.data[consumed:], block.first_line + reader.line_num)
            return cells, itertools.chain([rest] if rest.data else [], source)
    raise FileRejectedError(EMPTY, "the file is empty")


def parse(block: Block, column_count: int, wanted: list[int], numbers: int = 0) -> ParsedBlock:
    """The ``wanted`` columns (by position) of every record with ``column_count`` fields,
    as strings; the first ``numbers`` of them as float64 instead when every one of their
    cells in the block is a finite number (the common case, where converting them in
    Arrow's reader, on its threads, saves the cast the rules would do)."""
    if numbers:
        try:
            typed = _read(block, column_count, wanted, numbers)
        except pa.ArrowInvalid:  # a cell that is not a number, or not CSV: read again
            typed = None
        if typed is not None and all(
            pc.all(pc.is_finite(typed.columns.column(index))).as_py() is not False
            for index in range(numbers)
        ):
            return typed
    try:
        return _read(block, column_count, wanted, 0)
    except pa.ArrowInvalid as error:
        raise FileRejectedError(NOT_CSV, f"the file is not valid CSV: {error}") from None


def _read(block: Block, column_count: int, wanted: list[int], numbers: int) -> ParsedBlock:
    wrong = 0

    def skip_wrong_field_count(_: pa_csv.InvalidRow) -> str:
        nonlocal wrong
        wrong += 1
        return "skip"

    names = [str(position) for position in range(column_count)]
    types = dict.fromkeys(names, pa.string())
    # Only what Arrow's float parser reads as a number (a subset of the rules' NUMBER
    # once trimmed): an empty cell or "NA" fails the read instead of becoming null.
    types.update((names[position], pa.float64()) for position in wanted[:numbers])
    table = pa_csv.read_csv(
        pa.BufferReader(block.data),
        # Arrow parses the block in chunks of this size, one per thread; a record
        # longer than a chunk is still read whole.
        read_options=pa_csv.ReadOptions(column_names=names, block_size=PARSE_CHUNK_BYTES),
        parse_options=pa_csv.ParseOptions(
            # Without quotes no value holds a line break, and Arrow parses twice as
            # fast when it need not look for one.
            newlines_in_values=b'"' in block.data,
            invalid_row_handler=skip_wrong_field_count,
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            include_columns=[names[position] for position in wanted],
            null_values=[],
            strings_can_be_null=False,
            check_utf8=False,  # the whole block was validated once
        ),
    )
    return ParsedBlock(table, wrong)


def parsed_ahead(
    source: Iterator[Block],
    parser: Ahead,
    column_count: int,
    wanted: list[int],
    numbers: int = 0,
) -> Iterator[tuple[Block, ParsedBlock]]:
    """Each block with its parsed ``wanted`` columns (``parse``), parsed a block ahead."""
    return prepared_ahead(
        source,
        functools.partial(parse, column_count=column_count, wanted=wanted, numbers=numbers),
        parser,
    )


def prepared_ahead(
    source: Iterator[Block], prepare: Callable[[Block], Prepared], preparer: Ahead
) -> Iterator[tuple[Block, Prepared]]:
    """Each block with ``prepare(block)``, in order; ``preparer`` prepares the next block
    while the caller works on this one. Arrow and numpy release the GIL in their
    kernels, so both cores work."""
    previous: tuple[Block, Future[Prepared]] | None = None
    for block in source:
        upcoming = preparer.submit(prepare, block)
        if previous is not None:
            yield previous[0], previous[1].result()
        previous = block, upcoming
    if previous is not None:
        yield previous[0], previous[1].result()


def record_lines(block: Block) -> Iterator[tuple[int, int]]:
    """(line number, field count) of each non-blank record, as Python's csv module
    counts lines: a record spanning lines is named by its last."""
    reader = csv.reader(io.StringIO(block.data.decode("utf-8"), newline=""))
    for row in reader:
        if row:
            yield block.first_line - 1 + reader.line_num, len(row)


def _growing(block_bytes: int) -> Iterator[int]:
    """FIRST_BLOCK_BYTES, doubling up to ``block_bytes``: the first block is cleaned
    while the next ones are read and parsed, so a small one starts every stage sooner
    (30 ms of a 1M-row upload's 300 ms went by before the first 4 MiB block was parsed)."""
    size = min(FIRST_BLOCK_BYTES, block_bytes)
    while True:
        yield size
        size = min(2 * size, block_bytes)


def _read_ahead(stream: IO[bytes], sizes: Iterator[int], reader: Ahead) -> Iterator[bytes]:
    """Chunks of the next of ``sizes`` bytes each and a last empty one; ``reader`` reads
    (downloads, decompresses) the next chunk while the caller cleans this one."""
    upcoming: Future[bytes] = reader.submit(stream.read, next(sizes))
    while True:
        try:
            chunk = upcoming.result()
        # Only what gzip raises: a failed download is the storage's error to report.
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise FileRejectedError(NOT_CSV, f"the gzip stream is corrupt: {error}") from None
        if chunk:
            upcoming = reader.submit(stream.read, next(sizes))
        yield chunk
        if not chunk:
            return


def _record_end(data: bytes) -> int:
    """Just past the last line feed outside quotes, or -1."""
    end = data.rfind(b"\n")
    quotes = data.count(b'"', 0, end) if end >= 0 else 0
    while end >= 0:
        if quotes % 2 == 0:
            return end + 1
        previous = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', previous + 1, end)
        end = previous
    return -1


def _validate(data: bytes, offset: int) -> None:
    """UTF-8 text without NUL bytes (the csv module and Arrow both accept NUL)."""
    nul = data.find(b"\x00")
    if nul < 0 and data.isascii():  # the common block: no str of it is made
        return
    try:
        data.decode("utf-8")
        invalid = -1
    except UnicodeDecodeError as error:
        invalid = error.start
    if nul >= 0 and (invalid < 0 or nul < invalid):
        raise FileRejectedError(NOT_CSV, "the file holds NUL bytes: it is binary, not CSV text")
    if invalid >= 0:
        raise FileRejectedError(NOT_CSV, f"the file is not UTF-8 text (byte {offset + invalid})")


class _Prefixed(io.RawIOBase):
    """Puts bytes already read back in front of a stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """What the stream reads, without the copy through a buffer ``RawIOBase.read``
        makes: the head once, in front of the first read."""
        if size is None or size < 0:
            head, self._head = self._head, b""
            return head + self._rest.read()
        if len(self._head) >= size:
            head, self._head = self._head[:size], self._head[size:]
            return head
        head, self._head = self._head, b""
        rest = self._rest.read(size - len(head))
        return head + rest if head else rest

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            size = min(len(view), len(self._head))
            view[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)
