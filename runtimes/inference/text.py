"""Generated token bytes to the text a client sees: incremental UTF-8 decoding and stop sequences.

Kept apart so that the generator (``runtime.generate``) and the verifier (``verifier.py``) apply one rule:
the verifier rebuilds the claimed text from the claimed tokens and must get exactly what an honest
worker sent.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopFilter:
    """Cuts generated text at the first stop sequence, holding back text that may begin one.

    Without the hold-back a client would already have received "###" before learning that "###" was
    the stop sequence and not part of the answer.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return what is safe to emit now, and whether a stop sequence was reached."""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), hold, -1):
                if self._pending.endswith(stop[:k]):
                    hold = k
                    break
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        """The held-back text, once generation ended without completing a stop sequence."""
        out, self._pending = self._pending, ""
        return out


class TextAssembler:
    """Token bytes in, emittable text out; ``hit_stop`` once a stop sequence is complete."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tokens may split a character
        self._stops = StopFilter(stops)
        self.hit_stop = False

    def push(self, piece: bytes) -> str:
        """One token's bytes; the text that is safe to emit now."""
        out, self.hit_stop = self._stops.push(self._decoder.decode(piece))
        return out

    def finish(self) -> str:
        """What remains once generation ended (nothing after a stop sequence)."""
        if self.hit_stop:
            return ""
        out, self.hit_stop = self._stops.push(self._decoder.decode(b"", final=True))
        return out if self.hit_stop else out + self._stops.flush()
