"""A generated row's text as its ids arrive a chunk at a time: OpenAI `stop`
strings (the answer ends before the first one, which is not returned) and
the deltas a stream may send so far.

The answer is the decoded text without its leading and trailing whitespace,
or, once a stop string appears, all before the first one (leading whitespace
still dropped). A delta holds back what the next ids could still change: a
trailing partial UTF-8 character (decoded as U+FFFD), trailing whitespace
and an ending that could start a stop string (one may span chunks). So the
deltas join to exactly the answer that the whole row gives, for a tokenizer
whose decode of a prefix of the ids is a prefix of the decode of all of them
up to trailing whitespace (byte-level BPE, as Qwen's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"  # what a partial UTF-8 character decodes to


class TextStream:
    def __init__(
        self, decode: Callable[[list[int]], str], stop_ids: Iterable[int], stops: Sequence[str]
    ):
        self.decode, self.stop_ids, self.stops = decode, frozenset(stop_ids), tuple(stops)
        self.sent = ""  # the text handed out by `feed` so far
        self.stopped = False  # a stop string appeared: the row needs no more ids

    def _visible(self, row: Sequence[int]) -> str:
        return self.decode([t for t in row if t not in self.stop_ids]).lstrip()

    def _cut(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def text_of(self, row: Sequence[int]) -> tuple[str, bool]:
        """(the answer text of the complete row, whether a stop string cut it)."""
        text = self._visible(row)
        cut = self._cut(text)
        return (text.rstrip() if cut is None else text[:cut]), cut is not None

    def _held(self, text: str) -> int:
        """Where the ending that the next ids could still change begins."""
        end = len(text.rstrip(REPLACEMENT))
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    end = min(end, len(text) - k)
                    break
        return end

    def feed(self, row: Sequence[int]) -> str:
        """The new text that is final after `row` (the ids so far, a growing
        prefix of the row); sets `stopped` once a stop string appeared."""
        if self.stopped:
            return ""
        text = self._visible(row)
        cut = self._cut(text)
        self.stopped = cut is not None
        ready = text[:cut] if self.stopped else text[: self._held(text)].rstrip()
        if not ready.startswith(self.sent):  # a tokenizer whose decode is not prefix-stable
            return ""
        delta, self.sent = ready[len(self.sent) :], ready
        return delta

    def rest(self, answer: str) -> str:
        """What of the final `answer` (text_of the whole row) is not sent yet."""
        if not answer.startswith(self.sent):
            log.warning("streamed text %r is not a prefix of the answer %r", self.sent, answer)
        return answer[len(self.sent) :]
