"""Every HTTP entry point's contract: JSON answers, never a 5xx for client input, the
documented limits and error shape, every problem of a 422, and predict's OpenAPI
description of the model it serves."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_core.http_body import MAX_BODY_BYTES, MAX_JSON_DEPTH
from pipeline_core.processing import DatasetSchema, process
from pipeline_core.serving import MAX_REPORTED_PROBLEMS
from pipeline_core.settings import TrainingSettings
from pipeline_core.training import TrainingRequest, train_smoke_and_promote
from tests.functions.conftest import BUCKET, ENVIRONMENT, IRIS, IRIS_CLASSES, Function, upload
from tests.functions.fakes import InMemoryPublisher, InMemoryStorage, RecordingStarter

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROUTES = {
    "predict": ["/", "/health", "/ready", "/model", "/versions", "/reload", "/openapi.json"],
    "process_data": ["/"],
    "train_model": ["/", "/promote"],
}


@pytest.fixture(scope="module")
def functions() -> Iterator[dict[str, Function]]:
    """The three HTTP functions over one bucket whose champion was trained on iris."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        storage = InMemoryStorage(BUCKET)
        ref = upload(storage, "raw/iris.csv", IRIS)
        processed = process(storage, ref, DatasetSchema()).to_json()
        training = TrainingSettings(
            project="p", data_bucket=BUCKET, hyperparameters={"n_estimators": 5}
        )
        train_smoke_and_promote(storage, TrainingRequest.of_processed(ref, processed), training)
        yield {
            target: Function(target, "http").use(
                storage=storage, publisher=InMemoryPublisher(), starter=RecordingStarter()
            )
            for target in ROUTES
        }


def assert_json_answer(response: Any, method: str) -> Any:
    """Below 500, JSON, and an error in the documented shape."""
    assert response.status_code < 500, response.data[:500]
    assert response.mimetype == "application/json", response.data[:200]
    if method == "HEAD":  # no body by definition
        return None
    body = json.loads(response.data)
    if response.status_code >= 400:
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


NUMBERS = (
    st.integers()
    | st.integers(min_value=2**1024, max_value=2**1100)  # beyond float range
    | st.floats()  # NaN and infinities included
    | st.sampled_from([3.5e38, -3.5e38, 1e308, 5e-324, -0.0])
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from([*FEATURES, "instances", "features", "parameters", "bucket", "x"])
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
PARAMETERS = st.fixed_dictionaries(
    {"model_version": st.sampled_from(["20261121T193000123456Z-ab12cd", "x", 7])}
) | st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=2)
INSTANCE = st.fixed_dictionaries({name: NUMBERS for name in FEATURES}) | st.lists(
    NUMBERS, min_size=3, max_size=5
)
NEAR_VALID = st.fixed_dictionaries(
    {"instances": st.lists(INSTANCE, max_size=4)}, optional={"parameters": PARAMETERS}
)
STAGE_REQUEST = st.fixed_dictionaries(
    {
        "bucket": st.sampled_from([BUCKET, "other", ""]),
        "object": st.sampled_from(["raw/iris.csv", "raw/none.csv", "../x", "raw/"]),
        "generation": st.integers() | st.text(max_size=6) | st.none(),
    },
    optional={
        "processed_data": st.sampled_from(["processed/", "processed/raw/iris.csv/1/data/"])
        | st.text(max_size=10),
        "processed_parts": st.integers(-2, 3) | st.text(max_size=3),
        "model_version": st.text(max_size=30),
    },
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as Python writes them


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BODIES = st.one_of(
    st.sampled_from([b"", b"null", b"7", b'"text"', b"true", b"[]", b"{}"]),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    JSON_VALUES.map(_json_bytes),
    NEAR_VALID.map(_json_bytes),
    STAGE_REQUEST.map(_json_bytes),
    st.integers(min_value=MAX_JSON_DEPTH - 1, max_value=3000).map(_nested),
    st.sampled_from([b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"a": 1' + b"0" * 5000 + b"}"]),
)
# "?" and "#" would start a query or fragment: queries are drawn on their own.
PATH_CHARACTERS = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="?#"
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        'application/octet-stream; x="',
        "*/*",
    ]
)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def requests(draw: st.DrawFn, target: str) -> dict[str, Any]:
    known = [*ROUTES[target], "/robots.txt", "/favicon.ico", "//", "/health/", "/%00", "/.."]
    path = draw(
        st.sampled_from(known) | st.text(PATH_CHARACTERS, max_size=12).map(lambda text: f"/{text}")
    )
    headers = {
        name: draw(HEADER_TEXT)
        for name in draw(
            st.sets(
                st.sampled_from(
                    [
                        "X-Workflow-Execution-Id",
                        "Accept",
                        "Content-Encoding",
                        "Accept-Encoding",
                        "Origin",
                    ]
                )
            )
        )
    }
    return {
        "method": draw(
            st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        ),
        "path": path,
        "data": draw(BODIES),
        "content_type": draw(CONTENT_TYPES),
        "headers": headers,
        "query_string": draw(st.sampled_from(["", "a=1", "%ff=%00", "x" * 300])),
        # A Content-Length that lies (the body is shorter or longer) or is no number.
        "environ_overrides": draw(
            st.sampled_from([{}, {}, {}])
            | st.sampled_from(["0", "3", "-1", "abc", "99999999999999999999", "1e3"]).map(
                lambda length: {"CONTENT_LENGTH": length}
            )
        ),
    }


@pytest.mark.parametrize("target", list(ROUTES))
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_requests_get_json_and_never_a_server_error(
    functions: dict[str, Function], target: str, data: st.DataObject
) -> None:
    request = data.draw(requests(target))
    response = functions[target].client.open(**request)
    assert_json_answer(response, request["method"])


@pytest.mark.parametrize("target", list(ROUTES))
def test_a_body_over_the_limit_is_refused_before_it_is_read(
    functions: dict[str, Function], target: str
) -> None:
    client = functions[target].client
    # Declared too large: refused by its Content-Length, so nothing is read.
    declared = client.post(
        "/", data=b"{}", environ_overrides={"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)}
    )
    # Chunked (no Content-Length): refused while reading, at the limit.
    chunked = client.post(
        "/",
        input_stream=io.BytesIO(b" " * (MAX_BODY_BYTES + 1)),
        environ_overrides={"wsgi.input_terminated": True},
    )
    for response in (declared, chunked):
        body = assert_json_answer(response, "POST")
        assert response.status_code == 413
        assert body["error"]["code"] == "payload_too_large"
        assert body["error"]["limit_bytes"] == MAX_BODY_BYTES
        assert "32 MiB" in body["error"]["message"]


@pytest.mark.parametrize("target", list(ROUTES))
def test_nesting_beyond_the_limit_is_a_400_that_names_it(
    functions: dict[str, Function], target: str
) -> None:
    client = functions[target].client
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        response = client.post("/", data=_nested(depth), content_type="application/json")
        body = assert_json_answer(response, "POST")
        assert response.status_code == 400
        assert f"the limit is {MAX_JSON_DEPTH} levels" in body["error"]["message"]
    at_the_limit = client.post("/", data=_nested(MAX_JSON_DEPTH))
    assert "too deeply" not in assert_json_answer(at_the_limit, "POST")["error"]["message"]


def test_a_wrong_method_is_a_405_naming_the_allowed_one(functions: dict[str, Function]) -> None:
    response = functions["predict"].client.delete("/model")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert assert_json_answer(response, "DELETE")["error"]["code"] == "method_not_allowed"


def test_a_422_lists_every_problem_bounded_with_their_count(
    functions: dict[str, Function],
) -> None:
    client = functions["predict"].client
    good = dict.fromkeys(FEATURES, 1.0)
    instances = [
        good,
        {**good, FEATURES[0]: "wide", FEATURES[1]: None},  # two problems in one row
        {name: value for name, value in good.items() if name != FEATURES[3]},  # missing
        [1.0, 2.0],  # wrong length
        {**good, "colour": 3},  # unknown feature
    ]
    response = client.post("/", json={"instances": instances})
    error = assert_json_answer(response, "POST")["error"]
    assert response.status_code == 422
    assert error["code"] == "invalid_input"
    assert error["problem_count"] == 5
    assert [(problem["row"], problem["feature"]) for problem in error["problems"]] == [
        (1, FEATURES[0]),
        (1, FEATURES[1]),
        (2, FEATURES[3]),
        (3, None),
        (4, "colour"),
    ]
    assert "must be a number, got 'wide'" in error["problems"][0]["message"]
    assert (error["row"], error["feature"]) == (1, FEATURES[0])  # the first, as before
    assert error["message"].startswith("5 problems")

    many = client.post("/", json={"instances": [[None] * 4] * 10})  # 40 problems
    error = assert_json_answer(many, "POST")["error"]
    assert error["problem_count"] == 40
    assert len(error["problems"]) == MAX_REPORTED_PROBLEMS


def openapi(functions: dict[str, Function]) -> dict[str, Any]:
    response = functions["predict"].client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def validator(document: dict[str, Any], schema: str) -> Any:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    )


def test_openapi_describes_every_route_and_the_served_model(
    functions: dict[str, Function],
) -> None:
    document = openapi(functions)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == set(ROUTES["predict"])
    schemas = document["components"]["schemas"]
    assert schemas["Record"]["required"] == FEATURES
    assert [item["title"] for item in schemas["Positional"]["prefixItems"]] == FEATURES
    assert schemas["Prediction"]["properties"]["label"]["enum"] == IRIS_CLASSES
    versions = functions["predict"].client.get("/versions").get_json()
    assert document["info"]["x-model-version"] == versions["champion"]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for answer in operation["responses"].values():
                assert "$ref" in answer or "application/json" in answer["content"], path


@pytest.mark.parametrize(
    "case",
    [
        (
            "POST",
            "/",
            {"instances": [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.1, 2.3]]},
            200,
            "PredictResponse",
        ),
        ("POST", "/", dict.fromkeys(FEATURES, 1), 200, "PredictResponse"),
        ("POST", "/", {"instances": [[1, 2]]}, 422, "Error"),
        ("POST", "/", {"instances": "x"}, 400, "Error"),
        ("GET", "/health", None, 200, "Health"),
        ("GET", "/ready", None, 200, "Ready"),
        ("GET", "/model", None, 200, "Model"),
        ("GET", "/versions", None, 200, "Versions"),
        ("POST", "/reload", None, 200, "Reloaded"),
    ],
)
def test_answers_match_the_description(
    functions: dict[str, Function], case: tuple[str, str, Any, int, str]
) -> None:
    method, path, body, status, schema = case
    document = openapi(functions)
    response = functions["predict"].client.open(path, method=method, json=body)
    assert response.status_code == status
    assert str(status) in document["paths"][path][method.lower()]["responses"]
    validator(document, schema).validate(response.get_json())
    if schema == "PredictResponse":
        validator(document, "PredictRequest").validate(body)


def test_before_a_champion_openapi_describes_the_shapes_with_any_features(
    function: type[Function], storage: InMemoryStorage
) -> None:
    response = function("predict", "http").use(storage=storage).client.get("/openapi.json")
    document = response.get_json()
    assert response.status_code == 200 and document["info"]["x-model-version"] is None
    validator(document, "PredictRequest").validate({"instances": [{"anything": 1.5}]})
    validator(document, "PredictRequest").validate({"features": [1, 2, 3]})
