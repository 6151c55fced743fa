"""The model catalog: loading, validation errors that name the model and field, price lookups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from models.catalog import CHARS_PER_TOKEN, Catalog, ModelSpec, estimate_tokens, load_catalog
from models.errors import ConfigError, UnknownModelError

GOOD = {
    "version": 1,
    "typical_output_tokens": 200,
    "models": [
        {
            "name": "small",
            "provider": "acme",
            "input_price_per_1m": 0.5,
            "output_price_per_1m": 1.5,
            "latency_ms": 400,
            "context_window": 8000,
        },
        {
            "name": "big",
            "input_price_per_1m": 10.0,
            "output_price_per_1m": 30.0,
            "latency_ms": 2500,
            "context_window": 128000,
            "capabilities": ["vision", "tools"],
        },
    ],
}


def _write(tmp_path: Path, data: object, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _with_big(**changes: object) -> dict:
    """GOOD with fields of the model 'big' changed (None removes the field)."""
    big = dict(GOOD["models"][1])
    for key, value in changes.items():
        if value is None:
            big.pop(key)
        else:
            big[key] = value
    return {**GOOD, "models": [GOOD["models"][0], big]}


# --------------------------------------------------------------------------- loading
def test_load_catalog_reads_every_field(tmp_path: Path) -> None:
    cat = load_catalog(_write(tmp_path, GOOD))
    assert cat.names == ("small", "big")
    assert cat.typical_output_tokens == 200
    assert cat["big"] == ModelSpec(
        name="big",
        input_price_per_1m=10.0,
        output_price_per_1m=30.0,
        latency_ms=2500,
        context_window=128000,
        capabilities=("vision", "tools"),
    )
    assert cat["small"].provider == "acme"
    assert cat["small"].capabilities == ()


def test_bundled_catalog_covers_the_sample_data(catalog: Catalog, sample_records: list) -> None:
    used = {m for r in sample_records for m in r.outcomes}
    assert used <= set(catalog.names)
    assert len(catalog.names) == len(set(catalog.names))


def test_to_dict_round_trips(tmp_path: Path) -> None:
    cat = load_catalog(_write(tmp_path, GOOD))
    again = Catalog.from_dict(cat.to_dict())
    assert again == cat
    # The snapshot is plain data (it goes into JSON manifests).
    assert yaml.safe_load(yaml.safe_dump(cat.to_dict())) == cat.to_dict()


# --------------------------------------------------------------------------- validation errors
@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        pytest.param(
            _with_big(input_price_per_1m=-1.0),
            "models[big].input_price_per_1m",
            "greater than or equal to 0",
            id="negative-input-price",
        ),
        pytest.param(
            _with_big(output_price_per_1m=-0.01),
            "models[big].output_price_per_1m",
            "greater than or equal to 0",
            id="negative-output-price",
        ),
        pytest.param(
            _with_big(input_price_per_1m=float("inf")),
            "models[big].input_price_per_1m",
            "finite",
            id="infinite-price",
        ),
        pytest.param(
            _with_big(latency_ms=0), "models[big].latency_ms", "greater than 0", id="zero-latency"
        ),
        pytest.param(
            _with_big(context_window=0),
            "models[big].context_window",
            "greater than 0",
            id="zero-context",
        ),
        pytest.param(
            _with_big(capabilities=["telepathy"]),
            "models[big].capabilities.0",
            "'vision', 'tools' or 'json'",
            id="unknown-capability",
        ),
        pytest.param(
            _with_big(colour="blue"), "models[big].colour", "Extra inputs", id="unknown-field"
        ),
        pytest.param(
            _with_big(latency_ms=None), "models[big].latency_ms", "Field required", id="missing"
        ),
        pytest.param(
            {**GOOD, "models": [{**GOOD["models"][0], "name": ""}]},
            "models[0].name",
            "at least 1 character",
            id="empty-name-falls-back-to-index",
        ),
        pytest.param({**GOOD, "models": []}, "models", "at least 1 item", id="no-models"),
        pytest.param({**GOOD, "version": 2}, "version", "Input should be 1", id="version"),
        pytest.param({**GOOD, "pricing": {}}, "pricing", "Extra inputs", id="unknown-top-level"),
        pytest.param(
            {**GOOD, "typical_output_tokens": 0},
            "typical_output_tokens",
            "greater than 0",
            id="typical-output-tokens",
        ),
    ],
)
def test_validation_error_names_model_and_field(
    tmp_path: Path, data: dict, field: str, reason: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert info.value.field == field
    assert reason in info.value.reason
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: {field}: ")


def test_several_errors_are_counted(tmp_path: Path) -> None:
    data = _with_big(input_price_per_1m=-1.0, latency_ms=-5)
    with pytest.raises(ConfigError) as info:
        load_catalog(_write(tmp_path, data))
    assert info.value.field == "models[big].input_price_per_1m"
    assert info.value.reason.endswith("(and 1 more error(s))")


def test_duplicate_names_are_refused() -> None:
    data = {**GOOD, "models": [GOOD["models"][0], {**GOOD["models"][1], "name": "small"}]}
    with pytest.raises(ConfigError) as info:
        Catalog.from_dict(data)
    assert info.value.field == "models[small].name"
    assert info.value.reason == "duplicate model name"


def test_duplicate_name_error_names_the_file(tmp_path: Path) -> None:
    data = {**GOOD, "models": [GOOD["models"][0], {**GOOD["models"][1], "name": "small"}]}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert info.value.source == str(path)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("version: 1\nmodels:\n  - name: a\n   price: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert info.value.field == "catalog"
    assert info.value.source == str(path)
    assert info.value.reason.startswith("invalid YAML at line 4, column ")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- a\n- b\n", id="list"),
        pytest.param("just a string\n", id="scalar"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        load_catalog(path)
    assert info.value.field == "catalog"


def test_empty_file_says_models_are_required(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert (info.value.field, info.value.reason) == ("models", "Field required")


def test_repeated_key_is_an_error_not_last_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("version: 1\nversion: 1\nmodels: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="found duplicate key 'version'"):
        load_catalog(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert info.value.field == "catalog"
    assert info.value.reason == f"no such file: {path}"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_bytes(b"version: 1\nmodels: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_catalog(path)
    assert info.value.field == "catalog"


# --------------------------------------------------------------------------- lookups and prices
def test_lookups() -> None:
    cat = Catalog.from_dict(GOOD)
    assert "big" in cat and "huge" not in cat
    assert cat.get("huge") is None
    assert cat.get("small") is cat["small"]
    with pytest.raises(UnknownModelError) as info:
        cat["huge"]
    assert str(info.value) == "model: unknown model 'huge'; known: big, small"
    assert info.value.name == "huge"


def test_require_names_the_first_unknown_and_the_field() -> None:
    cat = Catalog.from_dict(GOOD)
    cat.require(["big", "small"])
    with pytest.raises(UnknownModelError) as info:
        cat.require(["big", "gpt5", "gpt6"], field="candidates")
    assert info.value.name == "gpt5"
    assert str(info.value).startswith("candidates: unknown model 'gpt5'; known: big, small")


def test_prices_are_per_token_in_the_order_asked() -> None:
    cat = Catalog.from_dict(GOOD)
    inp, out = cat.prices(["big", "small", "big"])
    assert inp.dtype == np.float64 and out.dtype == np.float64
    np.testing.assert_array_equal(inp, np.array([10.0, 0.5, 10.0]) / 1e6)
    np.testing.assert_array_equal(out, np.array([30.0, 1.5, 30.0]) / 1e6)
    with pytest.raises(UnknownModelError, match="'nope'"):
        cat.prices(["small", "nope"])


def test_cost_usd() -> None:
    spec = Catalog.from_dict(GOOD)["big"]
    assert spec.cost_usd(1000, 500) == pytest.approx((1000 * 10.0 + 500 * 30.0) / 1e6)
    assert spec.cost_usd(0, 0) == 0.0


@pytest.mark.parametrize(
    ("chars", "tokens"),
    [
        pytest.param(0, 0, id="empty"),
        pytest.param(1, 1, id="one"),
        pytest.param(4, 1, id="exact"),
        pytest.param(5, 2, id="rounds-up"),
        pytest.param(4000, 1000, id="large"),
    ],
)
def test_estimate_tokens_is_ceil_chars_over_4(chars: int, tokens: int) -> None:
    assert CHARS_PER_TOKEN == 4
    assert estimate_tokens(chars) == tokens


def test_spec_is_frozen() -> None:
    spec = Catalog.from_dict(GOOD)["small"]
    with pytest.raises(ValueError, match="frozen"):
        spec.input_price_per_1m = 0.0  # type: ignore[misc]


# --------------------------------------------------------------------------- today's models
def test_the_catalog_has_todays_models_with_prices_context_and_capabilities(
    catalog: Catalog,
) -> None:
    expected = {  # name: (input $/1M, output $/1M, context window, capabilities)
        "gpt-4o": (2.5, 10.0, 128000, ("vision", "tools", "json")),
        "gpt-4o-mini": (0.15, 0.6, 128000, ("vision", "tools", "json")),
        "claude-3.5-sonnet": (3.0, 15.0, 200000, ("vision", "tools")),
    }
    for name, (inp, out, window, caps) in expected.items():
        spec = catalog[name]
        assert (spec.input_price_per_1m, spec.output_price_per_1m) == (inp, out)
        assert spec.context_window == window and spec.capabilities == caps
    assert sum("vision" in m.capabilities for m in catalog.models) >= 5


def test_todays_models_are_listed_cheap_capable_first(catalog: Catalog) -> None:
    """Their order in the file is the preference for models without learned scores."""
    names = list(catalog.names)
    today = names[names.index("gpt-4o-mini") :]
    assert today[:5] == [
        "gpt-4o-mini",
        "gemini-2.0-flash",
        "gpt-4.1-mini",
        "gpt-4o",
        "claude-3.5-sonnet",
    ]
    vision = [n for n in today if "vision" in catalog[n].capabilities]
    assert vision[0] == "gpt-4o-mini"
    # the cheap vision models (≤ $0.5 per 1M input tokens) come before the dear ones
    cheap = [catalog[n].input_price_per_1m <= 0.5 for n in vision]
    assert cheap == sorted(cheap, reverse=True)


def test_an_unknown_model_message_lists_all_and_names_the_file(catalog: Catalog) -> None:
    message = catalog.missing_message(["x-2", "gpt-4o", "x-1"])
    assert message == (
        f"2 model(s) in the logs are not in the catalog {catalog.source}: 'x-1', 'x-2'; "
        f"add them to {catalog.source} with their prices (or pass --catalog FILE)"
    )


def test_to_dict_only_keeps_those_models_in_catalog_order(catalog: Catalog) -> None:
    data = catalog.to_dict(only=["claude-3.5-sonnet", "gpt-4o", "gpt-4-1106-preview"])
    assert [m["name"] for m in data["models"]] == [
        "gpt-4-1106-preview",
        "gpt-4o",
        "claude-3.5-sonnet",
    ]
    assert Catalog.from_dict(data).names == ("gpt-4-1106-preview", "gpt-4o", "claude-3.5-sonnet")
