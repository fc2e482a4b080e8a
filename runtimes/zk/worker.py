"""A proving worker process: ``python -m runtimes.zk.worker``.

It reads jobs from stdin and writes results to stdout, one frame each (``runtimes.zk.pool``): a job is
``(function, args)`` with a function name from ``runtimes.zk.prover.JOBS``; a result is ``("ok", value)``,
``("error", exc)`` for one of our errors (a malformed section found while decoding), or
``("crash", traceback)`` for anything else. EOF on stdin ends the process.

The worker imports the prover's modules only (no trio, no daemon), so it starts in about 0.1 s.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any, BinaryIO


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def main() -> None:
    from hyperion_node.errors import HyperionError
    from runtimes.zk.pool import FRAME_HEADER, encode_frame
    from runtimes.zk.prover import JOBS

    # The protocol owns the real stdout; stray prints (from a library) go to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    while True:
        header = _read_exact(stdin, FRAME_HEADER.size)
        if header is None:
            break
        (size,) = FRAME_HEADER.unpack(header)
        body = _read_exact(stdin, size)
        if body is None:
            break
        function, args = pickle.loads(body)
        reply: tuple[str, Any]
        try:
            reply = ("ok", JOBS[function](*args))
        except HyperionError as exc:
            reply = ("error", exc)
        except Exception:
            reply = ("crash", traceback.format_exc())
        out.write(encode_frame(reply))
        out.flush()
    # EOF: every reply is flushed and nothing else is held, so skip the interpreter's teardown, which frees
    # the last job's points one by one (measured: the pool's close took 0.15 s of a 2^14 whole process).
    out.close()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
