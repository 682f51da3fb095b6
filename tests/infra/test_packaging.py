"""Deterministic packaging of the function source (pitfall 6)."""

from __future__ import annotations

import ast
import io
import os
import zipfile
from pathlib import Path

import pytest

from components.packaging import FIXED_TIMESTAMP, PackagingError, package_source

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
TEST_FAKES = REPOSITORY_ROOT / "tests" / "functions" / "fakes.py"


def make_tree(root: Path) -> Path:
    files = {
        "main.py": "def predict(request):\n    return 'ok'\n",
        "requirements.txt": "flask\n",
        "pipeline_core/__init__.py": "",
        "pipeline_core/serving.py": "VALUE = 1\n",
        "pipeline_core/__pycache__/serving.cpython-311.pyc": "bytecode",
        "pipeline_core/stale.pyc": "bytecode",
        "tests/test_main.py": "def test(): ...\n",
        ".venv/lib/site.py": "",
        ".env": "SECRET=1\n",
        "pipeline_core/.serving.py.swp": "editor state",
        "test_local.py": "",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_same_tree_gives_same_bytes_whatever_the_file_times(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    first = package_source(tree)
    for index, path in enumerate(sorted(tree.rglob("*"))):
        os.utime(path, (1_000_000 + index * 7919, 2_000_000_000 - index * 104729))
        path.chmod(0o755 if path.is_dir() else 0o600)
    second = package_source(tree)
    assert second.content == first.content
    assert second.sha256 == first.sha256


def test_two_copies_in_different_places_package_identically(tmp_path: Path) -> None:
    assert package_source(make_tree(tmp_path / "a")).sha256 == (
        package_source(make_tree(tmp_path / "b")).sha256
    )


def test_a_changed_handler_changes_the_hash_and_object_name(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    before = package_source(tree)
    (tree / "pipeline_core" / "serving.py").write_text("VALUE = 2\n", encoding="utf-8")
    after = package_source(tree)
    assert after.sha256 != before.sha256
    assert after.object_name() != before.object_name()
    assert after.object_name() == f"functions/source-{after.sha256}.zip"


def test_caches_tests_virtualenvs_and_hidden_files_are_excluded(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    archive = package_source(tree)
    assert archive.files == (
        "main.py",
        "pipeline_core/__init__.py",
        "pipeline_core/serving.py",
        "requirements.txt",
    )
    (tree / "pipeline_core" / "__pycache__" / "other.pyc").write_text("new", encoding="utf-8")
    (tree / "tests" / "test_more.py").write_text("", encoding="utf-8")
    assert package_source(tree).sha256 == archive.sha256


def test_entries_are_sorted_with_fixed_time_and_mode(tmp_path: Path) -> None:
    archive = package_source(make_tree(tmp_path / "src"))
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        entries = opened.infolist()
        assert [e.filename for e in entries] == sorted(e.filename for e in entries)
        assert {e.date_time for e in entries} == {FIXED_TIMESTAMP}
        assert {e.external_attr >> 16 for e in entries} == {0o100644}
        # Stored, not deflated: the bytes must not depend on the zlib build.
        assert {e.compress_type for e in entries} == {zipfile.ZIP_STORED}
        assert opened.read("main.py").startswith(b"def predict")


def test_missing_required_files_are_named(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / "requirements.txt").unlink()
    with pytest.raises(PackagingError, match=r"lacks requirements\.txt"):
        package_source(tree, required=("main.py", "requirements.txt"))
    with pytest.raises(PackagingError, match="does not exist"):
        package_source(tmp_path / "nowhere")


def test_write_to_names_the_file_by_content(tmp_path: Path) -> None:
    archive = package_source(make_tree(tmp_path / "src"))
    path = archive.write_to(tmp_path / "build")
    assert path.name == f"function-source-{archive.sha256}.zip"
    assert path.read_bytes() == archive.content


def test_write_to_repairs_a_partial_file_and_drops_earlier_archives(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    build = tmp_path / "build"
    earlier = package_source(tree).write_to(build)
    (tree / "main.py").write_text("def predict(request):\n    return 'v2'\n", encoding="utf-8")
    archive = package_source(tree)
    current = build / f"function-source-{archive.sha256}.zip"
    current.write_bytes(archive.content[:10])
    unrelated = build / "notes.txt"
    unrelated.write_text("kept", encoding="utf-8")
    assert archive.write_to(build) == current
    assert current.read_bytes() == archive.content
    assert not earlier.exists()
    assert sorted(p.name for p in build.iterdir()) == sorted([current.name, "notes.txt"])


def classes_defined_in(source: str) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)}


def test_the_deployed_archive_ships_no_test_fake() -> None:
    """The fakes the tests use (a bucket in memory, a publisher, a starter) stay out of
    production: no deployed module defines or names one of them."""
    fakes = classes_defined_in(TEST_FAKES.read_text(encoding="utf-8"))
    assert {"InMemoryStorage", "InMemoryPublisher", "RecordingStarter"} <= fakes
    archive = package_source(REPOSITORY_ROOT / "function_src")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        modules = {
            name: opened.read(name).decode("utf-8")
            for name in archive.files
            if name.endswith(".py")
        }
    assert "pipeline_core/storage.py" in modules
    shipped = {(name, fake) for name, source in modules.items() for fake in fakes if fake in source}
    assert not shipped
