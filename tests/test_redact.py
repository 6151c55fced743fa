"""serving.redact: credentials never survive `redact`; `quote` is short and printable."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving import redact as redact_module
from serving.redact import REDACTED, quote, redact, redact_bytes, redact_json

SECRET = st.text(st.characters(categories=["L", "N"], max_codepoint=0x7F), min_size=12, max_size=40)


def test_all_is_exact():
    assert sorted(redact_module.__all__) == [
        "REDACTED",
        "quote",
        "redact",
        "redact_bytes",
        "redact_json",
    ]


@given(st.text(max_size=200), SECRET, st.text(max_size=200))
def test_a_known_secret_never_survives(before, secret, after):
    assert secret not in redact(before + secret + after, known=[secret])


@pytest.mark.parametrize(
    "credential",
    [
        "sk-proj-AbCdEf0123456789",
        "sk-ant-api03-abcdefghijklmnop",
        "Bearer abcdefghijklmnopqrstu",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz012",
        "xoxb-1234567890-abcdefghij",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop",
    ],
)
@given(
    before=st.sampled_from(["", "key: ", "invalid key '", "(", "x "]), after=st.text(max_size=20)
)
def test_credential_shapes_are_redacted_wherever_they_sit(credential, before, after):
    assert credential not in redact(before + credential + " " + after)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('{"api_key": "abc123xyz"}', '{"api_key": "[redacted]"}', id="json-pair"),
        pytest.param("password=hunter2!", "password=[redacted]", id="query-pair"),
        pytest.param('"max_tokens": 4096', '"max_tokens": 4096', id="not-a-secret-name"),
        pytest.param('"prompt_tokens": 12', '"prompt_tokens": 12', id="token-counts-stay"),
        pytest.param("the model is gpt-4", "the model is gpt-4", id="plain-text"),
    ],
)
def test_named_values(text, expected):
    assert redact(text) == expected


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
))  # fmt: skip
def test_redacting_json_keeps_it_json_and_changes_only_strings(value):
    redacted = redact_json(value)
    assert json.loads(json.dumps(redacted)) == redacted
    if not isinstance(value, dict | list | str):
        assert redacted == value


def test_redact_bytes_survives_undecodable_bytes():
    assert redact_bytes(b"\xff sk-abcdefghijklmnop") == "\ufffd [redacted]".encode()


@given(st.text(max_size=5000), st.integers(1, 100))
def test_quote_is_short_printable_and_marks_a_cut(value, limit):
    quoted = quote(value, limit=limit)
    assert quoted.isprintable()
    assert len(quoted) <= 10 * limit + 40
    assert quoted.endswith(f"… ({len(value)} characters)") == (len(value) > limit)
    assert REDACTED not in quoted or REDACTED in value
