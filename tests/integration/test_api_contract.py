"""Schemathesis against the live local predict function, from the OpenAPI description
it serves: bounded examples with a fixed seed, positive and negative; no 5xx, and
every answer's status, content type and body match the description."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench import serving
from components.config import load_stack_file
from devstack.processes import wait_until_healthy

EXAMPLES_PER_MODE = 100
OPERATIONS = {
    ("POST", "/"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/model"),
    ("GET", "/versions"),
    ("POST", "/reload"),
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def predict_url(stack_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-gcs-server with an iris champion trained by the real pipeline code, and
    predict serving it as the local stack starts it; both stopped by their PIDs."""
    config = load_stack_file(stack_file)
    with ExitStack() as cleanup:
        setup = serving.prepare(config, tmp_path_factory.mktemp("api-contract"), cleanup)
        predict = cleanup.enter_context(serving.running(setup.predict_plans["onnx"], setup.log_dir))
        wait_until_healthy([predict], timeout=serving.START_TIMEOUT_SECONDS, hints={})
        yield predict.url


@pytest.fixture(scope="module")
def predict_api(predict_url: str) -> Any:
    api = schemathesis.openapi.from_url(f"{predict_url}/openapi.json")
    api.validate()  # a valid OpenAPI 3.1 document
    return api


def test_the_description_names_the_serving_champion(predict_url: str) -> None:
    document = requests.get(f"{predict_url}/openapi.json", timeout=30).json()
    champion = requests.get(f"{predict_url}/versions", timeout=30).json()["champion"]
    assert document["info"]["x-model-version"] == champion
    schemas = document["components"]["schemas"]
    assert schemas["Prediction"]["properties"]["label"]["enum"] == [
        "setosa",
        "versicolor",
        "virginica",
    ]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_predict_conforms_to_its_description(
    predict_api: Any, predict_url: str, mode: schemathesis.GenerationMode
) -> None:
    """Every operation of the description, positive data (valid requests) and negative
    (requests that break it), as Schemathesis generates them."""

    @given(case=predict_api.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,  # a fixed seed: the same requests every run
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: Any) -> None:
        response = case.call_and_validate(base_url=predict_url, checks=CHECKS, timeout=30)
        answered.add((case.method, case.path, response.status_code))

    answered: set[tuple[str, str, int]] = set()
    conforms()
    operations = {(method, path) for method, path, _ in answered}
    statuses = {status for method, path, status in answered if (method, path) == ("POST", "/")}
    if mode.is_positive:
        # Every route but the description itself (Schemathesis does not call its source),
        # and valid requests are predicted.
        assert operations == OPERATIONS and 200 in statuses, answered
    else:
        # Only predictions have a request to break; broken ones are refused, never 5xx.
        assert operations == {("POST", "/")} and statuses & {400, 422}, answered
