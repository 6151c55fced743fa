"""Reading YAML files (catalog, service config) strictly, with errors that say where.

Both files are hand-edited, so a repeated key is an error rather than PyYAML's silent
last-one-wins, and a syntax error names the line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from models.errors import ConfigError

__all__ = ["read_yaml_mapping"]


def read_yaml_mapping(path: Path, field: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file `path` ({} for an empty file).

    Every problem is a ConfigError whose field is `field` ("config", "catalog") and whose
    source is the file.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(field, f"no such file: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, f"cannot read {source}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # safe: a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(field, f"invalid YAML at {where}{problem}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(field, f"invalid YAML: {exc}", source=source) from None
    if data is None:  # an empty file, or only comments
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(field, f"top level must be a mapping, got {kind}", source=source)
    return data


class _StrictLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, except that a repeated key is an error, not last-one-wins."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable: construct_mapping reports it below
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
