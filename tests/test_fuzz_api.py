"""Property-based fuzzing of the HTTP API from its own OpenAPI document, with schemathesis.

Every operation the running app documents gets `EXAMPLES` generated requests, valid and invalid
(schemathesis' positive and negative modes), sent in-process through a started app. Each
response must be no 5xx, have a status, content type and body the document promises, and a
request that breaks the schema must be refused with a 4xx. Admin operations are sent with the
key, so that their handlers, not only the key check, see the generated bodies.

``PROMPTROUTE_FUZZ_EXAMPLES`` raises the number of examples per operation for a longer local run.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os

import pytest
import schemathesis
from fakes import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving import create_app, load_settings
from serving.decision_log import read_log_lines

EXAMPLES = int(os.environ.get("PROMPTROUTE_FUZZ_EXAMPLES", "100"))
KEY = "fuzz-admin-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def served(tiny_artifact, catalog_path, tmp_path_factory):
    """(started TestClient, decision-log path) with the admin key set and an experiment."""
    log = tmp_path_factory.mktemp("log") / "decisions.jsonl"
    experiment = {
        "name": "fuzz",
        "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1, "knob": 2.0}],
    }
    config = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        decision_log={"path": str(log)},
        experiments=[experiment],
    )
    app = create_app(config, environ={"PROMPTROUTE_ADMIN_KEY": KEY})
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(TestClient(app)), log


def _send(client, case, admin: bool):
    """Send `case` through the module's TestClient, so the app runs under its own lifespan."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    headers = dict(kwargs.get("headers") or {})
    if admin:
        headers["X-API-Key"] = KEY
    content = kwargs.get("data")
    if "json" in kwargs:
        # allow_nan: what schemathesis generates is sent as is, even what strict JSON forbids.
        content = json.dumps(kwargs["json"], allow_nan=True).encode()
        headers.setdefault("Content-Type", "application/json")
    return client.request(
        kwargs["method"],
        kwargs["url"],
        headers=headers,
        params=kwargs.get("params") or None,
        content=content,
    )


_KNOWN_PATH_PARAMETERS = {
    "/experiments/{name}": {"name": "fuzz"},
    "/admin/breakers/{model}/reset": {"model": "claude-v1"},
}


def _cases(operation) -> st.SearchStrategy:
    """Valid and invalid requests, and the documented examples, of `operation`."""
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    strategies = [
        positive,
        operation.as_strategy(GenerationMode.NEGATIVE),
        *operation.get_strategies_from_examples(),
    ]
    known = _KNOWN_PATH_PARAMETERS.get(operation.path)
    if known is not None:  # random names are all 404s; these reach the handler's success path
        strategies.append(operation.as_strategy(path_parameters=known))
    if (operation.method.upper(), operation.path) == ("POST", "/route"):
        # Most schema-valid bodies miss a rule the schema cannot say (exactly one of prompt or
        # messages, known candidates); these reach the pipeline with every other field random.
        strategies.append(positive.map(_with_prompt))
    return st.one_of(strategies)


def _with_prompt(case):
    body = case.body if isinstance(case.body, dict) else {}
    kept = {k: v for k, v in body.items() if k not in ("prompt", "messages", "candidates")}
    case.body = {**kept, "prompt": "Explain how a hash map handles collisions."}
    return case


def _fuzzer(client, operation, statuses):
    """A hypothesis test sending `EXAMPLES` generated requests to `operation`."""
    label = f"{operation.method.upper()} {operation.path}"
    admin = operation.path.startswith("/admin/")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_cases(operation))
    def fuzz(case):
        response = _send(client, case, admin)
        statuses[(label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    return fuzz


def test_every_operation_holds_its_schema_under_generated_requests(served):
    client, log = served
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/route"),
        ("POST", "/feedback"),
        ("GET", "/models"),
        ("GET", "/experiments/{name}"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/breakers/{model}/reset"),
        ("GET", "/metrics"),
    }
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    for operation in operations:
        _fuzzer(client, operation, statuses)()

    cases = sum(statuses.values())
    server_errors = sum(n for (_, status), n in statuses.items() if status >= 500)
    by_status: collections.Counter[int] = collections.Counter()
    for (_, status), n in statuses.items():
        by_status[status] += n
    print(
        f"\nfuzz: {cases} cases over {len(operations)} operations, {server_errors} 5xx; "
        f"statuses {dict(sorted(by_status.items()))}"
    )
    for key, n in sorted(statuses.items()):
        print(n, *key)
    assert server_errors == 0
    # Every operation ran, and the fuzzed routes reached their handlers, not only validation.
    assert {label for label, _ in statuses} == {
        f"{op.method.upper()} {op.path}" for op in operations
    }
    assert statuses[("POST /route", 200)] > 0
    assert statuses[("POST /admin/reload", 200)] > 0
    # Every decision the fuzzing made is in the decision log, once, written when it was made.
    state = client.app.state.service
    decided = sum(
        sample.value
        for metric in state.metrics.registry.collect()
        if metric.name == "promptroute_decisions"
        for sample in metric.samples
        if sample.name == "promptroute_decisions_total"
    )
    assert decided >= statuses[("POST /route", 200)]
    rows = list(read_log_lines(log))
    decisions = [row for row in rows if row["kind"] == "decision"]
    assert len(decisions) == len({row["id"] for row in decisions}) == decided
    assert len(rows) == state.book.decision_log.lines_written
