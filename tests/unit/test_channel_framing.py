"""The channel's framing: answers are lines, however the byte stream cuts them into chunks."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator

from harness.channel import AgentChannel


class ScriptedTransport:
    """Answers each request (ids 1, 2, ...) with the chunks a test gives, once the request is written."""

    def __init__(self, cut: Callable[[bytes], list[bytes]]) -> None:
        self.cut = cut
        self.out: queue.Queue[bytes | None] = queue.Queue()

    def write(self, data: bytes) -> None:
        request = json.loads(data)
        answer = json.dumps({"id": request["id"], "ok": True, "result": request["args"]}).encode() + b"\n"
        for chunk in self.cut(answer):
            self.out.put(chunk)

    def chunks(self) -> Iterator[bytes]:
        while (chunk := self.out.get()) is not None:
            yield chunk

    def stderr_tail(self) -> str:
        return ""

    def close(self) -> None:
        self.out.put(None)


def test_a_long_answer_in_many_small_chunks_arrives_whole():
    channel = AgentChannel(ScriptedTransport(lambda line: [line[i:i + 1000] for i in range(0, len(line), 1000)]),
                           name="fake")
    try:
        payload = "x" * 3_000_000
        assert channel.call("echo", data=payload) == {"data": payload}
        assert channel.call("echo", n=2) == {"n": 2}
    finally:
        channel.close()


def test_answers_split_across_and_joined_within_chunks():
    pieces: list[bytes] = []

    def cut(line: bytes) -> list[bytes]:
        """Hold the first answer back and send it glued to the start of the second, cut mid-line."""
        pieces.append(line)
        if len(pieces) == 1:
            return []
        both = pieces[0] + pieces[1]
        middle = len(pieces[0]) + 5
        return [both[:middle], both[middle:]]

    channel = AgentChannel(ScriptedTransport(cut), name="fake")
    try:
        first = channel.submit("echo", n=1)
        second = channel.submit("echo", n=2)
        assert first.result(timeout=5) == {"n": 1} and second.result(timeout=5) == {"n": 2}
    finally:
        channel.close()
