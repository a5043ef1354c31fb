"""Property tests: arbitrary bytes never raise out of a session; framing is invisible
(whole vs byte-at-a-time feeding); only the rewritten span of a line ever changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpalg.core.messages import Action, ListenerOpened, OpenListener, Send, Side
from ftpalg.core.wire import Match, parse_client_line, parse_server_line
from tests.core.harness import CLIENT, SERVER, new_session

LINE_PIECES = st.sampled_from(
    [b"PORT 172,20,9,84,18,67\r\n", b"EPRT |1|172.20.9.84|4675|\r\n", b"USER a\r\n",
     b"227 Entering Passive Mode (172,20,9,80,19,137).\r\n", b"229 (|||6446|)\r\n",
     b"PORT 1,2,3\r\n", b"227 Logout.\r\n", b"\r\n", b"\n", b"PORT ", b"227 ", b"\xff\xf4"]
)  # fmt: skip
OWN_REPLIES = (b"421 ", b"425 ", b"500 ", b"501 ")
STREAM = st.lists(st.one_of(LINE_PIECES, st.binary(max_size=40)), max_size=12).map(b"".join)


def run(chunks: list[tuple[Side, bytes]], eof: bool = False) -> list[Action]:
    """Feed chunks; auto-bind every requested listener on the port asked for."""
    s = new_session()
    out: list[Action] = []
    pending = list(chunks)
    while pending:
        side, data = pending.pop(0)
        if not data and not eof:
            continue
        acts = s.receive(side, data, 0.0)
        while True:
            out.extend(acts)
            opens = [a for a in acts if isinstance(a, OpenListener)]
            if not opens:
                break
            acts = s.handle(ListenerOpened(opens[-1].listener, opens[-1].port), 0.0)
    return out


@settings(max_examples=300, deadline=None)
@given(client=STREAM, server=STREAM)
def test_whole_vs_byte_at_a_time(client: bytes, server: bytes) -> None:
    whole = run([(CLIENT, client), (SERVER, server)])
    singles = [(CLIENT, client[i : i + 1]) for i in range(len(client))]
    singles += [(SERVER, server[i : i + 1]) for i in range(len(server))]
    assert run(singles) == whole


@settings(max_examples=300, deadline=None)
@given(client=STREAM, server=STREAM, eof=st.booleans())
def test_never_raises_and_only_spans_change(client: bytes, server: bytes, eof: bool) -> None:
    chunks = [(CLIENT, client), (SERVER, server)]
    if eof:
        chunks += [(CLIENT, b""), (SERVER, b"")]
    out = run(chunks, eof)
    forwarded = {
        side: [a.data for a in out if isinstance(a, Send) and a.side is side.other]
        for side in (CLIENT, SERVER)
    }
    for side, stream in ((CLIENT, client), (SERVER, server)):
        lines = lf_lines(stream)
        for sent in forwarded[side]:
            if sent in lines or any(line.startswith(sent) for line in lines):
                continue  # unchanged line (or the unterminated rest at EOF)
            if side is SERVER and sent.startswith(OWN_REPLIES):
                continue  # ftpalg's own reply to the client, not a forwarded line
            # a rewritten line: some input line equals it outside the matched span
            parse = parse_client_line if side is CLIENT else parse_server_line
            assert any(_same_outside_span(line, sent, parse(line)) for line in lines), sent


def lf_lines(stream: bytes) -> list[bytes]:
    """Lines as the framer sees them: ending at LF only (CR is an ordinary byte)."""
    parts = stream.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _same_outside_span(line: bytes, sent: bytes, parsed: object) -> bool:
    if not isinstance(parsed, Match):
        return False
    head, tail = line[: parsed.start], line[parsed.end :]
    return sent.startswith(head) and sent.endswith(tail)
