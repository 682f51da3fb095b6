"""The docs work verbatim on a fresh clone.

The shell blocks of README.md and docs/DEPLOY.md are read the way a newcomer runs them,
top to bottom: every file a command names exists in the repository or was created by
an earlier step, every `make` target exists, every `python -m devstack` and
`python -m workflows_emulator` command line parses with that CLI's own parser, and every
prediction body names exactly the demo data's features. Links between the docs resolve.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components import topology
from components.config import ORCHESTRATIONS, load_stack_file
from devstack.demo import write_iris_csv
from devstack.plan import service_names

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ("README.md", "docs/DEPLOY.md")
EMULATOR_README = "workflows_emulator/README.md"
# Transcripts (`$ command` lines) whose command lines must parse too.
TRANSCRIPTS = ("docs/LOCAL_STACK.md",)
# References whose shell blocks show command lines that must parse too.
REFERENCES = (EMULATOR_README, "docs/WORKFLOWS_API.md")
DOCS = (
    "README.md",
    EMULATOR_README,
    *(str(path.relative_to(ROOT)) for path in sorted(ROOT.glob("docs/*.md"))),
)
FILE_SUFFIXES = frozenset({".csv", ".json", ".yaml", ".yml", ".txt", ".py", ".md", ".toml", ".zip"})
OPERATORS = frozenset({"&&", "||", ";", "|"})
PYTHONS = frozenset({"python", "python3", "python3.11", ".venv/bin/python"})
# The packages whose `python -m PACKAGE` command line the docs show; each has a cli.py.
CLI_PACKAGES = frozenset({"devstack", "workflows_emulator"})


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {shlex.join(self.words)}"


def shell_blocks(doc: str) -> Iterator[Command]:
    """Every simple command of the doc's ```bash blocks, in order."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    in_block = False
    pending = ""
    start = 0
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            in_block = line.strip() == "```bash" and not in_block
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield from split_commands(doc, start, pending + line)
        pending = ""


def transcript_commands(doc: str) -> Iterator[Command]:
    for number, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("$ "):
            yield from split_commands(doc, number, line[2:])


def split_commands(doc: str, line: int, text: str) -> Iterator[Command]:
    words: list[str] = []
    for word in [*shlex.split(text, comments=True), ";"]:
        if word in OPERATORS:
            if words:
                yield Command(doc, line, tuple(words))
            words = []
        else:
            words.append(word)


def runbook_commands() -> list[Command]:
    return [command for doc in RUNBOOKS for command in shell_blocks(doc)]


def cli_parser(words: tuple[str, ...]) -> tuple[Any, list[str]] | None:
    """The CLI parser and its argv when ``words`` runs one of the project's command
    lines (``python -m devstack`` or ``python -m workflows_emulator``), else None."""
    if len(words) < 3 or words[0] not in PYTHONS or words[1] != "-m":
        return None
    module = words[2]
    if module not in CLI_PACKAGES:
        return None
    return importlib.import_module(f"{module}.cli").build_parser(), list(words[3:])


def created_by(command: Command) -> set[str]:
    """Files and folders a step creates (besides `> FILE` redirections)."""
    words = command.words
    created = {words[i + 1] for i, word in enumerate(words[:-1]) if word == ">"}
    if words[:1] == ("make",) and set(words[1:]) & {"venv", "demo", "test", "unit"}:
        created.add(".venv")
    if words == ("make", "policy-venv"):
        created.add("policy/.venv")
    if words[:3] == ("pulumi", "stack", "init") and len(words) > 3:
        created.add(f"Pulumi.{words[3]}.yaml")
    parsed = cli_parser(words)
    if parsed is not None:
        parser, argv = parsed
        arguments = parser.parse_args(argv)
        if arguments.command == "sample-data":
            created.add(str(arguments.file))
    return created


def named_files(command: Command) -> list[str]:
    """The repository paths a command names (not URLs, variables, flags or options)."""
    top_level = {path.name for path in ROOT.iterdir()} | {".venv"}
    files = []
    for word in command.words:
        if word.startswith(("-", "$", "/")) or re.search(r"[\s$=@:<>]", word):
            continue
        path = Path(word)
        if path.suffix in FILE_SUFFIXES or (len(path.parts) > 1 and path.parts[0] in top_level):
            files.append(word)
    return files


def test_the_runbooks_have_commands_to_check() -> None:
    """Guards the extraction itself: an empty list would make every test below pass."""
    commands = runbook_commands()
    assert len(commands) > 30
    assert any(cli_parser(command.words) for command in commands)
    assert any(command.words[:2] == ("curl", "-X") for command in commands)


@pytest.mark.parametrize("doc", RUNBOOKS)
def test_every_file_a_command_names_exists_or_an_earlier_step_created_it(doc: str) -> None:
    created: set[str] = set()
    missing = []
    for command in shell_blocks(doc):
        checks_only = command.words[0] in ("test", "[")
        creates = created_by(command)
        for name in [] if checks_only else named_files(command):
            under_created = any(name == c or name.startswith(f"{c}/") for c in created)
            if name not in creates and not under_created and not (ROOT / name).exists():
                missing.append(f"{command}: {name}")
        created |= creates
    assert not missing, "files that neither exist nor were created by an earlier step:\n" + (
        "\n".join(missing)
    )


def test_every_make_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.M))
    unknown = [
        f"{command}: {target}"
        for command in runbook_commands()
        if command.words[0] == "make"
        for target in command.words[1:]
        if target not in targets
    ]
    assert not unknown, "\n".join(unknown)


def test_every_command_line_parses_with_its_cli_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Subcommands and flags come from the parser itself, so a command a doc names but
    the CLI lacks fails here with argparse's own message."""
    commands = [
        *runbook_commands(),
        *(c for doc in TRANSCRIPTS for c in transcript_commands(doc)),
        *(c for doc in REFERENCES for c in shell_blocks(doc)),
    ]
    checked: dict[str, int] = dict.fromkeys(CLI_PACKAGES, 0)
    for command in commands:
        parsed = cli_parser(command.words)
        if parsed is None:
            continue
        parser, argv = parsed
        try:
            arguments = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{command}\n{capsys.readouterr().err}")
        service = getattr(arguments, "service", None)
        assert service in (None, *local_services()), f"{command}: no service {service!r}"
        checked[command.words[2]] += 1
    assert checked["devstack"] > 10
    assert checked["workflows_emulator"] >= 2


def local_services() -> set[str]:
    """Every service the local stack runs in either mode (what `logs` and `restart` take),
    and the workflow's own name, which `logs` takes for the Executions API's log."""
    config = load_stack_file(ROOT / "Pulumi.dev.yaml")
    return {
        topology.workflow_name(config),
        *(
            name
            for mode in ORCHESTRATIONS
            for name in service_names(dataclasses.replace(config, orchestration=mode))
        ),
    }


def demo_features(tmp_path: Path) -> list[str]:
    data = tmp_path / "iris.csv"
    write_iris_csv(data, "target")
    header = data.read_text(encoding="utf-8").splitlines()[0].split(",")
    return [column for column in header if column != "target"]


def test_every_prediction_body_names_exactly_the_demo_data_features(tmp_path: Path) -> None:
    features = demo_features(tmp_path)
    commands = runbook_commands() + [c for doc in TRANSCRIPTS for c in transcript_commands(doc)]
    bodies = 0
    wrong = []
    for command in commands:
        for word in command.words:
            if not word.startswith("{"):
                continue
            body = json.loads(word)
            for instance in body.get("instances", []) if isinstance(body, dict) else []:
                bodies += 1
                if isinstance(instance, dict) and list(instance) != features:
                    wrong.append(f"{command}: {list(instance)}")
    assert bodies >= 3
    assert not wrong, f"the demo data's features are {features}:\n" + "\n".join(wrong)


def heading_anchors(doc: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_between_the_docs_resolves(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    assert "shared/DESIGN.md" not in text, "the design notes are not part of the repository"
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        inside = linked.exists() and ROOT in linked.parents
        missing_anchor = bool(anchor) and linked.suffix == ".md"
        if not inside or (missing_anchor and anchor not in heading_anchors(linked)):
            broken.append(target)
    assert not broken, f"{doc} links to what is not there: {broken}"


def test_the_architecture_names_every_module_of_the_deployed_package() -> None:
    """docs/ARCHITECTURE.md's module map lists exactly the modules of pipeline_core, so
    a module added, split or removed shows there."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("### The deployed package, module by module", 1)[1].split("```")[1]
    listed = re.findall(r"^  (\w+\.py) ", block, re.M)
    package = ROOT / "function_src" / "pipeline_core"
    modules = sorted(path.name for path in package.glob("*.py") if path.name != "__init__.py")
    assert sorted(listed) == modules, "update the module map of docs/ARCHITECTURE.md"
    assert len(set(listed)) == len(listed), "a module is listed twice"
