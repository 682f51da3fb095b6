"""The entry points' runtime: one storage client per (project, bucket).

``main`` is imported inside each test: importing it installs the functions' logging,
which collecting the other tiers' tests must not do.
"""

from __future__ import annotations

from pipeline_core.storage import GcsStorage, Storage
from tests.functions.fakes import InMemoryStorage


def test_each_project_and_bucket_gets_its_own_client_opened_once() -> None:
    from main import Runtime

    opened: list[tuple[str, str]] = []

    def open_bucket(project: str, bucket: str) -> Storage:
        opened.append((project, bucket))
        return InMemoryStorage(bucket)

    runtime = Runtime(environ={}, open_bucket=open_bucket)
    data = runtime.bucket("p", "data")
    other = runtime.bucket("p", "other")
    elsewhere = runtime.bucket("q", "data")
    assert runtime.bucket("p", "data") is data
    assert runtime.bucket("p", "other") is other
    assert (data.bucket, other.bucket, elsewhere.bucket) == ("data", "other", "data")
    assert len({id(data), id(other), id(elsewhere)}) == 3
    assert opened == [("p", "data"), ("p", "other"), ("q", "data")]


def test_by_default_the_clients_are_cloud_storage_for_the_bucket_asked_for() -> None:
    from main import Runtime

    runtime = Runtime(environ={})
    first = runtime.bucket("p", "first")
    second = runtime.bucket("p", "second")
    assert isinstance(first, GcsStorage) and isinstance(second, GcsStorage)
    assert (first.bucket, second.bucket) == ("first", "second")
    assert runtime.bucket("p", "first") is first
