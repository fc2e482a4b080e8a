"""Task inputs too large for a frame, sent by content address (``/hyperion/blob/1``, ``hyperion_node/blobs``).

The requester puts each payload field over ``blobs.inline_max_bytes`` in its blob store and sends its address
in the task's ``blobs`` map instead of the bytes; the worker fetches each one from the requester (or finds it
in its cache: a proving key or a scene sent once serves every task that names it) and puts the bytes back in
the payload before admission reads it. Only the wire changes: the receipt's input hash, the result checks
and spot checks all see the whole payload, as if it had come inline.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import trio

from hyperion_node.errors import UserError
from hyperion_node.tasks.messages import MAX_BLOB_FIELDS, TaskRequest

MIN_INPUT_RATE = 4 * 1024 * 1024  # bytes/s a worker is given to fetch a task's inputs before it must answer


class BlobInputs(Protocol):
    """What the task layer needs of the blob service (``BlobService`` implements it)."""

    @property
    def inline_max_bytes(self) -> int: ...

    @property
    def max_input_bytes(self) -> int: ...

    async def offer(self, data: bytes) -> str:
        """Keep ``data`` and serve it to peers; its content address."""
        ...

    async def fetch_input(self, peer: str, address: str, size: int) -> bytes:
        """The blob at ``address`` (``size`` bytes), from the cache or fetched from ``peer``; ``UserError``
        when it cannot be had."""
        ...


async def by_address(blobs: BlobInputs | None, request: TaskRequest) -> TaskRequest:
    """The request as it goes on the wire: its largest bytes fields by address, when over the inline bound."""
    if blobs is None:
        return request
    big = sorted(((len(v), k) for k, v in request.payload.items()
                  if isinstance(v, bytes) and len(v) > blobs.inline_max_bytes), reverse=True)[:MAX_BLOB_FIELDS]
    if not big:
        return request
    refs = {name: (await blobs.offer(request.payload[name]), size) for size, name in big}
    payload = {k: v for k, v in request.payload.items() if k not in refs}
    return dataclasses.replace(request, payload=payload, blobs=refs)


def fetch_bytes(request: TaskRequest) -> int:
    return sum(size for _, size in request.blobs.values())


def fetch_seconds(request: TaskRequest) -> float:
    """How long a worker may take to fetch the request's inputs, at MIN_INPUT_RATE."""
    return fetch_bytes(request) / MIN_INPUT_RATE


async def resolve(blobs: BlobInputs | None, request: TaskRequest) -> TaskRequest:
    """The request with every field sent by address back in its payload; ``UserError`` saying why not."""
    if not request.blobs:
        return request
    if blobs is None:
        raise UserError("this node takes no task inputs by address")
    too_big = [name for name, (_, size) in request.blobs.items() if size > blobs.max_input_bytes]
    if too_big:
        raise UserError(f"payload fields {', '.join(too_big)} are larger than this node's blobs.max_input_mib")
    payload: dict[str, Any] = dict(request.payload)
    with trio.move_on_after(max(1.0, request.deadline_s)) as scope:
        for name, (address, size) in request.blobs.items():
            payload[name] = await blobs.fetch_input(request.requester, address, size)
    if scope.cancelled_caught:
        raise UserError("the task's inputs did not arrive before its deadline")
    return dataclasses.replace(request, payload=payload, blobs={})
