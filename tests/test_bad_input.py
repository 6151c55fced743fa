"""Bad input through the HTTP API: each malformed request is a 4xx naming its field, never a 500.

Every case checks the status, the error code, the field (absent for problems with the body as a
whole) and that the status is one the OpenAPI document promises for that path. Rejected requests
leave nothing behind: no pending decision, no decision counted.
"""

from __future__ import annotations

import contextlib
import json
import math
import time

import pytest
from fakes import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import create_app, load_settings
from serving.routes.route import MAX_MESSAGES_DEPTH
from serving.schemas import ErrorResponse, RouteResponse

JSON = {"content-type": "application/json"}
MB = 1_000_000


@pytest.fixture(scope="module")
def make_client(tiny_artifact, catalog_path, tmp_path_factory):
    """`make_client(**settings)` → a started TestClient with a decision log, closed at the end."""
    with contextlib.ExitStack() as stack:

        def make(**overrides):
            log = tmp_path_factory.mktemp("log") / "decisions.jsonl"
            config = load_settings(
                artifact=str(tiny_artifact),
                catalog=str(catalog_path),
                decision_log={"path": str(log)},
                **overrides,
            )
            app = create_app(config, environ={"PROMPTROUTE_ADMIN_KEY": "k"})
            return stack.enter_context(TestClient(app))

        yield make


@pytest.fixture(scope="module")
def client(make_client):
    """One client for every rejected request: rejections must leave no state behind."""
    return make_client()


@pytest.fixture(scope="module")
def documented(client) -> dict[tuple[str, str], set[int]]:
    """(method, path) → the status codes the OpenAPI document lists."""
    paths = client.get("/openapi.json").json()["paths"]
    return {
        (method.upper(), path): {int(code) for code in op["responses"]}
        for path, ops in paths.items()
        for method, op in ops.items()
    }


def check_error(
    response, documented, status: int, code: str, field: str | None, *, prefixed: bool = True
) -> dict:
    """The response is `status` with one well-formed error naming `field` (None: no field).

    `prefixed`: the message starts with the field's name, as field errors' messages do.
    """
    assert response.status_code == status, response.text
    method, path = response.request.method, response.request.url.path
    assert status in documented[(method, path)], f"{status} is not documented for {path}"
    error = ErrorResponse.model_validate(response.json()).error
    assert error.code == code
    if field is None:
        assert "field" not in response.json()["error"]
    else:
        assert error.field == field
        assert error.message.startswith(f"{field}: ") is prefixed
    return response.json()["error"]


def post_raw(client, path: str, data: bytes, headers=JSON):
    return client.post(path, content=data, headers=headers)


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text of `depth` nested arrays around `leaf`."""
    return "[" * depth + leaf + "]" * depth


@pytest.fixture(scope="module", autouse=True)
def _rejections_leave_no_trace(client):
    yield
    state = client.app.state.service
    decided = sum(
        s.value
        for m in state.metrics.registry.collect()
        if m.name == "promptroute_decisions"
        for s in m.samples
        if s.name == "promptroute_decisions_total"
    )
    assert (len(state.book.pending), decided) == (0, 0)


# ---------------------------------------------------------------------------------------------
# Bodies that are not JSON at all: 400, no field


NOT_JSON = [
    pytest.param(b"{bad", "the body is not valid JSON: ", id="malformed"),
    pytest.param(b'{"prompt": "x",}', "the body is not valid JSON: ", id="trailing-comma"),
    pytest.param(b"{'prompt': 'x'}", "the body is not valid JSON: ", id="single-quotes"),
    pytest.param(b'{"prompt": "x"', "the body is not valid JSON: ", id="cut-short"),
    pytest.param(
        b'{"prompt": "caf\xe9"}', "the body is not valid JSON: it is not UTF-8", id="latin1"
    ),
    pytest.param(
        b'{"prompt": "\xff\xfe"}', "the body is not valid JSON: it is not UTF-8", id="ff-fe"
    ),
    pytest.param(
        b'{"pro\x80mpt": "x"}', "the body is not valid JSON: it is not UTF-8", id="in-key"
    ),
    pytest.param(
        b'{"prompt": "\xe2\x82"}', "the body is not valid JSON: it is not UTF-8", id="cut-char"
    ),
    pytest.param(
        b'{"prompt": "\xc0\xaf"}', "the body is not valid JSON: it is not UTF-8", id="overlong"
    ),
    pytest.param(
        ('{"prompt": "x", "metadata": {"a": ' + nested(100_000) + "}}").encode(),
        "the body is not valid JSON: it is nested too deeply",
        id="nested-100k",
    ),
    pytest.param(
        b'{"prompt": "x", "max_cost_usd": ' + b"9" * 5000 + b"}",
        "the body is not valid JSON: it holds a number that cannot be decoded",
        id="5000-digits",
    ),
]


@pytest.mark.parametrize("path", ["/route", "/feedback"])
@pytest.mark.parametrize(("data", "message"), NOT_JSON)
def test_a_body_that_is_not_json_is_400(client, documented, path, data, message):
    error = check_error(post_raw(client, path, data), documented, 400, "invalid_json", None)
    assert error["message"].startswith(message)


def test_an_encoded_lone_surrogate_is_422_naming_the_field(client, documented):
    # json.loads decodes with "surrogatepass": the bytes become a lone surrogate, which the
    # schema refuses (it could be neither logged nor forwarded).
    data = b'{"prompt": "\xed\xa0\x80"}'
    error = check_error(
        post_raw(client, "/route", data), documented, 422, "invalid_request", "prompt"
    )
    assert error["message"] == "prompt: must be valid Unicode text (it contains a lone surrogate)"


def test_invalid_utf8_names_the_byte(client, documented):
    data = b'{"prompt": "ok \xff"}'
    error = check_error(post_raw(client, "/route", data), documented, 400, "invalid_json", None)
    at = data.index(b"\xff")
    assert error["message"] == f"the body is not valid JSON: it is not UTF-8 (at byte {at})"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"[1]", "the body must be a JSON object", id="array"),
        pytest.param(b'"prompt"', "the body must be a JSON object", id="string"),
        pytest.param(b"null", "the body must be a JSON object", id="null"),
        pytest.param(b"", "a JSON body is required", id="empty"),
    ],
)
@pytest.mark.parametrize("path", ["/route", "/feedback"])
def test_a_body_that_is_not_an_object_is_422(client, documented, path, data, message):
    error = check_error(post_raw(client, path, data), documented, 422, "invalid_request", None)
    assert error["message"] == message


# ---------------------------------------------------------------------------------------------
# /route: each field


ROUTE_FIELDS = [
    pytest.param({"prompt": 5}, "prompt", id="prompt-int"),
    pytest.param({"prompt": ["x"]}, "prompt", id="prompt-list"),
    pytest.param({"prompt": {"text": "x"}}, "prompt", id="prompt-object"),
    pytest.param({"prompt": ""}, "prompt", id="empty-prompt"),
    pytest.param({"prompt": " \t\n "}, "prompt", id="blank-prompt"),
    pytest.param({}, "prompt", id="neither-prompt-nor-messages"),
    pytest.param({"prompt": None, "messages": None}, "prompt", id="both-null"),
    pytest.param({"messages": []}, "messages", id="empty-messages"),
    pytest.param({"messages": {"role": "user"}}, "messages", id="messages-object"),
    pytest.param({"messages": ["hi"]}, "messages[0]", id="message-string"),
    pytest.param({"messages": [{"role": "user", "content": ""}]}, "messages", id="no-text"),
    pytest.param({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", id="role-int"),
    pytest.param(
        {"messages": [{"role": "user", "content": {"a": 1}}]},
        "messages[0].content",
        id="content-object",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": 7}]}]},
        "messages[0].content[0].type",
        id="part-type",
    ),
    pytest.param({"prompt": "x", "task_type": 3}, "task_type", id="task-type-int"),
    pytest.param({"prompt": "x", "task_type": "t" * 101}, "task_type", id="task-type-long"),
    pytest.param({"prompt": "x", "candidates": "claude-v1"}, "candidates", id="candidates-str"),
    pytest.param({"prompt": "x", "candidates": [1]}, "candidates[0]", id="candidate-int"),
    pytest.param({"prompt": "x", "candidates": ["m" * 201]}, "candidates[0]", id="long-name"),
    pytest.param({"prompt": "x", "max_cost_usd": "1"}, "max_cost_usd", id="cost-str"),
    pytest.param({"prompt": "x", "max_cost_usd": True}, "max_cost_usd", id="cost-bool"),
    pytest.param({"prompt": "x", "max_cost_usd": -1}, "max_cost_usd", id="cost-negative"),
    pytest.param({"prompt": "x", "max_cost_usd": -1e-12}, "max_cost_usd", id="cost-tiny-neg"),
    pytest.param({"prompt": "x", "max_latency_ms": -5}, "max_latency_ms", id="latency-negative"),
    pytest.param({"prompt": "x", "max_latency_ms": 0}, "max_latency_ms", id="latency-zero"),
    pytest.param({"prompt": "x", "max_latency_ms": [1]}, "max_latency_ms", id="latency-list"),
    pytest.param(
        {"prompt": "x", "expected_output_tokens": -1}, "expected_output_tokens", id="tokens-neg"
    ),
    pytest.param(
        {"prompt": "x", "expected_output_tokens": "9"}, "expected_output_tokens", id="tokens-str"
    ),
    pytest.param({"prompt": "x", "priority": 1}, "priority", id="priority-int"),
    pytest.param({"prompt": "x", "priority": "QUALITY"}, "priority", id="priority-case"),
    pytest.param({"prompt": "x", "knob": -2}, "knob", id="knob-negative"),
    pytest.param({"prompt": "x", "knob": "0.5"}, "knob", id="knob-str"),
    pytest.param({"prompt": "x", "user_id": ""}, "user_id", id="user-empty"),
    pytest.param({"prompt": "x", "user_id": 42}, "user_id", id="user-int"),
    pytest.param({"prompt": "x", "metadata": "team=a"}, "metadata", id="metadata-str"),
    pytest.param({"prompt": "x", "metadata": [["a", 1]]}, "metadata", id="metadata-list"),
    pytest.param({"prompt": "x", "Prompt": "y"}, "Prompt", id="unknown-field"),
]


@pytest.mark.parametrize(("body", "field"), ROUTE_FIELDS)
def test_route_field_errors_name_the_field(client, documented, body, field):
    check_error(client.post("/route", json=body), documented, 422, "invalid_request", field)


# JSON's non-standard NaN and Infinity literals, as raw text: Python's json module accepts them.
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("field", ["max_cost_usd", "max_latency_ms", "knob"])
def test_non_finite_ceilings_are_422(client, documented, field, value):
    data = f'{{"prompt": "x", "{field}": {value}}}'.encode()
    error = check_error(post_raw(client, "/route", data), documented, 422, "invalid_request", field)
    assert error["message"] == f"{field}: Input should be a finite number"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "2.5"])
def test_non_integer_token_counts_are_422(client, documented, value):
    data = f'{{"prompt": "x", "expected_output_tokens": {value}}}'.encode()
    response = post_raw(client, "/route", data)
    check_error(response, documented, 422, "invalid_request", "expected_output_tokens")


@pytest.mark.parametrize(
    ("candidates", "field", "name"),
    [
        pytest.param(["gpt-5"], "candidates[0]", "gpt-5", id="unknown"),
        pytest.param(["claude-v1", "claude-v9"], "candidates[1]", "claude-v9", id="second"),
        pytest.param(["Claude-V1"], "candidates[0]", "Claude-V1", id="case-matters"),
        pytest.param(["claude-v1 "], "candidates[0]", "claude-v1 ", id="trailing-space"),
    ],
)
def test_unknown_candidate_models_are_422_listing_the_known(
    client, documented, tiny_router, candidates, field, name
):
    response = client.post("/route", json={"prompt": "x", "candidates": candidates})
    error = check_error(response, documented, 422, "unknown_model", field)
    assert error["message"].startswith(f"{field}: unknown model {name!r}; routable: ")
    assert error["known"] == sorted(tiny_router.models)


# ---------------------------------------------------------------------------------------------
# Size: 10 MB, 10,000 messages, deep nesting


def test_a_10mb_body_is_413_by_header_and_by_stream(client, documented):
    body = json.dumps({"prompt": "x" * (10 * MB)}).encode()
    expected = "request body exceeds the limit of 1000000 bytes"
    error = check_error(post_raw(client, "/route", body), documented, 413, "body_too_large", None)
    assert error["message"] == expected

    def chunks():  # no Content-Length: counted as it arrives, refused after the first MB
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = client.post("/route", content=chunks(), headers=JSON)
    assert check_error(response, documented, 413, "body_too_large", None)["message"] == expected
    response = post_raw(client, "/feedback", json.dumps({"request_id": "r" * 10 * MB}).encode())
    check_error(response, documented, 413, "body_too_large", None)


def test_a_10mb_prompt_within_a_larger_body_limit_is_413_naming_the_prompt(make_client):
    client = make_client(limits={"max_body_bytes": 16 * MB})
    response = client.post("/route", json={"prompt": "x" * (10 * MB)})
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "too_large",
        "message": "prompt: longer than 400000 characters",
        "field": "prompt",
    }


def test_10000_messages_are_413_naming_messages(client, documented):
    messages = [{"role": "user", "content": "hi"}] * 10_000
    error = check_error(
        client.post("/route", json={"messages": messages}), documented, 413, "too_large", "messages"
    )
    assert error["message"] == "messages: more than 1000 messages"


@pytest.mark.parametrize("depth", [9, 64, 900])
def test_deeply_nested_metadata_is_422(client, documented, depth):
    data = ('{"prompt": "x", "metadata": {"k": ' + nested(depth - 1) + "}}").encode()
    error = check_error(
        post_raw(client, "/route", data), documented, 422, "invalid_request", "metadata"
    )
    assert error["message"] == "metadata: nested deeper than 8 levels"


# 950 levels passed the route's own json.dumps check and then made the feedback's decision-log
# write hit the recursion limit: a 500, with the decision's row lost.
@pytest.mark.parametrize("depth", [MAX_MESSAGES_DEPTH + 1, 500, 950])
def test_deeply_nested_messages_are_422(client, documented, depth):
    extra = nested(depth - 2)  # messages (1) > message (2) > "extra" (3 … depth)
    data = ('{"messages": [{"role": "user", "content": "hi", "extra": ' + extra + "}]}").encode()
    error = check_error(
        post_raw(client, "/route", data), documented, 422, "invalid_request", "messages"
    )
    assert error["message"] == f"messages: nested deeper than {MAX_MESSAGES_DEPTH} levels"


def test_messages_at_the_depth_limit_are_routed_logged_and_answered(make_client):
    client = make_client()
    extra = json.loads(nested(MAX_MESSAGES_DEPTH - 2))
    messages = [{"role": "user", "content": "hi", "extra": extra}]
    response = client.post("/route", json={"messages": messages})
    assert response.status_code == 200
    rid = response.json()["request_id"]
    assert client.post("/feedback", json={"request_id": rid, "success": True}).status_code == 200
    state = client.app.state.service
    assert state.book.decision_log.lines_written == 2  # the decision, then its outcome


# ---------------------------------------------------------------------------------------------
# /feedback: each field


FEEDBACK_FIELDS = [
    pytest.param({"success": True}, "request_id", id="no-request-id"),
    pytest.param({"request_id": "r"}, "success", id="no-success"),
    pytest.param({"request_id": "", "success": True}, "request_id", id="empty-id"),
    pytest.param({"request_id": 7, "success": True}, "request_id", id="id-int"),
    pytest.param({"request_id": "r" * 201, "success": True}, "request_id", id="id-long"),
    pytest.param({"request_id": "r", "success": "true"}, "success", id="success-str"),
    pytest.param({"request_id": "r", "success": 1}, "success", id="success-int"),
    pytest.param({"request_id": "r", "success": None}, "success", id="success-null"),
    pytest.param({"request_id": "r", "success": True, "quality": 7}, "quality", id="quality-7"),
    pytest.param({"request_id": "r", "success": True, "quality": -0.1}, "quality", id="q-neg"),
    pytest.param({"request_id": "r", "success": True, "quality": "1"}, "quality", id="q-str"),
    pytest.param({"request_id": "r", "success": True, "latency_ms": -1}, "latency_ms", id="lat"),
    pytest.param({"request_id": "r", "success": True, "cost_usd": -0.5}, "cost_usd", id="cost"),
    pytest.param({"request_id": "r", "success": True, "model": ""}, "model", id="model-empty"),
    pytest.param({"request_id": "r", "success": True, "model": 3}, "model", id="model-int"),
    pytest.param({"request_id": "r", "success": True, "error_type": ""}, "error_type", id="et"),
    pytest.param(
        {"request_id": "r", "success": True, "error_type": "e" * 201}, "error_type", id="et-long"
    ),
    pytest.param({"request_id": "r", "success": True, "prompt": "x"}, "prompt", id="unknown"),
]


@pytest.mark.parametrize(("body", "field"), FEEDBACK_FIELDS)
def test_feedback_field_errors_name_the_field(client, documented, body, field):
    check_error(client.post("/feedback", json=body), documented, 422, "invalid_request", field)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["quality", "latency_ms", "cost_usd"])
def test_feedback_non_finite_numbers_are_422(client, documented, field, value):
    data = f'{{"request_id": "r", "success": false, "{field}": {value}}}'.encode()
    response = post_raw(client, "/feedback", data)
    check_error(response, documented, 422, "invalid_request", field)


def test_feedback_lone_surrogate_is_422(client, documented):
    data = b'{"request_id": "\\ud800", "success": true}'
    check_error(
        post_raw(client, "/feedback", data), documented, 422, "invalid_request", "request_id"
    )


def test_feedback_for_an_unknown_model_is_422_listing_the_known(client, documented, tiny_router):
    response = client.post("/feedback", json={"request_id": "r", "success": True, "model": "x"})
    error = check_error(response, documented, 422, "unknown_model", "model")
    assert error["known"] == sorted(tiny_router.models)


def test_feedback_for_an_unknown_request_is_404(client, documented):
    response = client.post("/feedback", json={"request_id": "nope", "success": True})
    error = check_error(
        response, documented, 404, "unknown_request_id", "request_id", prefixed=False
    )
    assert error["message"].startswith("no pending decision with request_id 'nope': ")


# ---------------------------------------------------------------------------------------------
# Open-ended input: never a 500


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=300), path=st.sampled_from(["/route", "/feedback"]))
def test_arbitrary_bytes_are_never_a_500(client, data, path):
    response = post_raw(client, path, data)
    assert response.status_code in (400, 404, 422), response.text
    error = ErrorResponse.model_validate(response.json()).error
    assert error.code in ("invalid_json", "invalid_request", "unknown_request_id")


_FEEDBACK_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=2),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "request_id",
                "success",
                "model",
                "latency_ms",
                "quality",
                "cost_usd",
                "error_type",
                "x",
            ]
        ),
        _FEEDBACK_VALUE,
    )
)
def test_arbitrary_feedback_is_never_a_500(client, body):
    response = post_raw(client, "/feedback", json.dumps(body, allow_nan=True).encode())
    assert response.status_code in (404, 422), response.text
    error = response.json()["error"]
    assert error["field"] in body or error["field"] in ("request_id", "success")


N = 400_000  # the default max_prompt_chars


@pytest.fixture(scope="module")
def roomy_client(make_client):
    """A body limit that lets the longest allowed prompt through, in any script."""
    return make_client(limits={"max_body_bytes": 5 * N})  # 4 bytes a character at most


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(min_size=1, max_size=2000))
def test_any_unicode_prompt_gets_a_finite_answer(roomy_client, text):
    response = roomy_client.post("/route", json={"prompt": text})
    if not text.strip():
        assert response.json()["error"]["field"] == "prompt"
        return
    assert response.status_code == 200, response.text
    body = RouteResponse.model_validate(response.json())
    assert all(math.isfinite(v) for v in body.scores.values())
    assert math.isfinite(body.estimated_cost_usd)


ADVERSARIAL = [
    pytest.param("a" * N, id="one-letter"),
    pytest.param("ab " * (N // 3), id="one-word"),
    pytest.param("9" * N, id="one-number"),
    pytest.param("😀" * N, id="emoji"),
    pytest.param("e\u0301" * (N // 2), id="combining"),
    pytest.param("\u202e\u200d" * (N // 2), id="bidi-zwj"),
    pytest.param("\n" * (N - 1) + "x", id="newlines"),
    pytest.param("(" * (N // 2) + ")" * (N // 2), id="brackets"),
    pytest.param("def f(x):\n    return x * 2\n" * (N // 28), id="code"),
    pytest.param("".join(chr(0x4E00 + i % 20000) for i in range(N)), id="cjk"),
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_the_largest_allowed_prompts_are_answered_in_bounded_time(roomy_client, text):
    started = time.perf_counter()
    response = roomy_client.post("/route", json={"prompt": text})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert all(math.isfinite(v) for v in response.json()["scores"].values())
    assert elapsed < 2.0  # typically ~20 ms: the features scan a bounded prefix
