"""A fault-injecting ``BlobStore`` wrapper, for tests of the layers above the stores.

Like kopia's ``FaultyStorage``: it implements the same interface, delegates everything to an
inner store, and fails one chosen ``put_many`` call before the inner store sees it, so the
contract's "a failed put leaves nothing behind" holds for the wrapper too. It never touches
disks; a disk-full test higher up gets the exact error a full disk would raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from dits.core.ids import ObjectId
from dits.errors import DitsError, StorageFullError
from dits.store.base import BlobStats, BlobStore

__all__ = ["FaultyBlobStore"]


class FaultyBlobStore:
    """``BlobStore`` that raises on the Nth ``put_many`` call and delegates everything else.

    Args:
        inner: the store that does the work.
        fail_on_put_call: 1-based number of the ``put_many`` call that fails; None never fails.
        error: the ``DitsError`` subclass raised (``StorageFullError`` by default).

    Attributes:
        put_calls: how many ``put_many`` calls were made, the failed one included.
    """

    def __init__(
        self,
        inner: BlobStore,
        fail_on_put_call: int | None = None,
        error: type[DitsError] = StorageFullError,
    ) -> None:
        if fail_on_put_call is not None and fail_on_put_call < 1:
            raise ValueError("fail_on_put_call counts from 1")
        self.inner = inner
        self.fail_on_put_call = fail_on_put_call
        self.error = error
        self.put_calls = 0

    def has_many(self, ids: Iterable[ObjectId]) -> set[ObjectId]:
        """See ``BlobStore.has_many``."""
        return self.inner.has_many(ids)

    def put_many(self, items: Iterable[tuple[ObjectId, bytes | memoryview]]) -> int:
        """See ``BlobStore.put_many``; the chosen call raises ``error`` and stores nothing."""
        self.put_calls += 1
        if self.put_calls == self.fail_on_put_call:
            raise self.error(
                f"no space left on device (injected fault on put_many call {self.put_calls})"
            )
        return self.inner.put_many(items)

    def get(self, oid: ObjectId) -> bytes:
        """See ``BlobStore.get``."""
        return self.inner.get(oid)

    def delete_many(self, ids: Iterable[ObjectId]) -> int:
        """See ``BlobStore.delete_many``."""
        return self.inner.delete_many(ids)

    def iter_ids(self) -> Iterator[ObjectId]:
        """See ``BlobStore.iter_ids``."""
        return self.inner.iter_ids()

    def stats(self) -> BlobStats:
        """See ``BlobStore.stats``."""
        return self.inner.stats()
