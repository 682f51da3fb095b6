"""The devstack command line on wrong input, without a stack: usage errors exit 2 with
one line naming the argument, before any stack is looked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.cli import main


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_upload_timeout_must_be_above_zero(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,target\n1,0\n", encoding="utf-8")

    error = usage_error(
        capsys, "--state-dir", str(tmp_path), "upload", str(data), "--wait", "--timeout", value
    )

    assert error.endswith(f"argument --timeout: expected a number above 0, got '{value}'")


@pytest.mark.parametrize("value", ["0", "-5", "2.5"])
def test_log_lines_must_be_a_whole_number_above_zero(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = usage_error(capsys, "--state-dir", str(tmp_path), "logs", "--lines", value)

    assert error.endswith(f"argument --lines: expected a number above 0, got '{value}'")
