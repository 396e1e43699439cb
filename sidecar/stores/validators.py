"""Validators for JSON schemas that clients send in their requests (`from_request`), and
those schemas as providers enforce them."""

from __future__ import annotations

from typing import Any

import orjson
from cachetools import LRUCache

from sidecar.errors import InvalidRequest
from sidecar.policy.native import NativeSchema, native_schema


class Validators:
    """Validators for schemas that clients send (`from_request`), compiled once per distinct
    schema text and kept in a small LRU: a request never compiles a schema seen before."""

    def __init__(self, size: int = 256) -> None:
        self._cache: LRUCache[bytes, Any] = LRUCache(size)
        self._native: LRUCache[bytes, NativeSchema] = LRUCache(size)

    def native(self, name: str, schema: dict[str, Any]) -> NativeSchema:
        """A client's schema as providers enforce it (policy/native.py), prepared once."""
        key = orjson.dumps([name, schema], option=orjson.OPT_SORT_KEYS)
        found = self._native.get(key)
        if found is None:
            found = self._native[key] = native_schema(name, schema, from_client=True)
        return found

    def get(self, schema: dict[str, Any]) -> Any:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        validator = self._cache.get(key)
        if validator is None:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise InvalidRequest(
                    f"the request's JSON schema is invalid: {exc.message}"
                ) from None
            validator = self._cache[key] = Draft202012Validator(schema)
        return validator
