"""Secret values in Helm values files: the rule both charts' tests apply (nothing secret in
values: a Secret is named, never filled in)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

SECRET_VALUE_KEY = re.compile(r"password|passwd|token|fernetkey$|secretkey$|jwtsecret$|"
                              r"connection$|credentials$|apikeys?$", re.IGNORECASE)


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, str(index)))
    else:
        yield path, node


def secret_values(values: Any) -> list[str]:
    """The dotted paths of `values` (parsed YAML) whose key names a password, key, token or
    connection and that hold something (not null, "" or false)."""
    return [".".join(path) for path, value in _leaves(values)
            if path and SECRET_VALUE_KEY.search(path[-1]) and value not in (None, "", False)]
