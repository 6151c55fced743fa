"""Request ids: version-4 UUIDs in hex, never repeated — also across a fork."""

from __future__ import annotations

import os
import uuid
import warnings

from serving.pipeline import _request_id


def test_ids_are_distinct_uuid4_hex_across_refills() -> None:
    ids = [_request_id() for _ in range(2_000)]  # several batches of 256
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


def test_a_forked_child_does_not_reuse_the_parents_stock() -> None:
    _request_id()  # the parent now holds unused ids
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python ≥ 3.12 warns about fork with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read)
        os.write(write, "".join(_request_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {_request_id() for _ in range(8)}
    assert len(child_ids) == 8 and not child_ids & parent_ids
