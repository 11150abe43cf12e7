"""What one mock app remembers between requests: files, stored responses, conversations.

Every store is bounded (oldest out first) so a long load test cannot grow the mock without
limit; a test that needs an object back reads it soon after creating it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway.mock.background import BackgroundRun
from gateway.mock.errors import MockError

MAX_OBJECTS = 1_000
# Uploaded bytes kept at most, over all files.
MAX_FILE_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


class BoundedStore(Generic[T]):
    """An insertion-ordered map that drops its oldest entries past ``limit``."""

    def __init__(self, limit: int = MAX_OBJECTS) -> None:
        self.limit = limit
        self._items: OrderedDict[str, T] = OrderedDict()

    def put(self, key: str, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, key: str, what: str) -> T:
        """The stored value, or the 404 OpenAI sends for an unknown id."""
        try:
            return self._items[key]
        except KeyError:
            raise MockError(
                404, f"No {what} found with id '{key}'.", "invalid_request_error"
            ) from None

    def pop(self, key: str, what: str) -> T:
        value = self.get(key, what)
        del self._items[key]
        return value

    def values(self) -> list[T]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class StoredFile:
    meta: dict[str, Any]
    data: bytes


@dataclass(slots=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    run: BackgroundRun | None = None  # background responses only

    def view(self) -> dict[str, Any]:
        return self.response if self.run is None else self.run.view()


class FileStore(BoundedStore[StoredFile]):
    def __init__(self, limit: int = MAX_OBJECTS, max_bytes: int = MAX_FILE_BYTES) -> None:
        super().__init__(limit)
        self.max_bytes = max_bytes

    def put(self, key: str, value: StoredFile) -> None:
        super().put(key, value)
        total = sum(len(f.data) for f in self._items.values())
        while total > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            total -= len(dropped.data)


@dataclass(slots=True)
class MockState:
    files: FileStore = field(default_factory=FileStore)
    responses: BoundedStore[StoredResponse] = field(default_factory=BoundedStore)
    conversations: BoundedStore[dict[str, Any]] = field(default_factory=BoundedStore)
    batches: BoundedStore[Any] = field(default_factory=BoundedStore)  # batches.Batch
