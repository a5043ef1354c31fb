"""Property tests: generated runs keep every invariant of tests/core/invariants.py (the
checker the fuzz target uses too), and framing is invisible (whole vs byte-at-a-time)."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ftpalg.core.messages import Action, Send, Side
from tests.core.driver import (
    CLIENT_LINES,
    SERVER_LINES,
    Accept,
    Bind,
    Close,
    Connected,
    Fail,
    Feed,
    Finish,
    Op,
    Run,
    Setup,
    Tick,
    Wait,
    run,
)
from tests.core.harness import CLIENT, SERVER

SETUPS = st.builds(
    Setup,
    faces=st.integers(0, 3),
    loose=st.booleans(),
    allow_low_data_ports=st.booleans(),
    max_line=st.sampled_from([64, 4096]),
    port_tries=st.integers(0, 4),
    auto_bind=st.booleans(),
    seed=st.integers(0, 3),
    strict_data_ports=st.booleans(),
    announce=st.booleans(),
    tls=st.sampled_from(["passthrough", "refuse", "terminate"]),
)
DELTAS = st.sampled_from([0.0, 0.5, 5.0, 19.9, 20.0, 29.0, 30.0, 60.0, 99.0, 100.0, 250.0])
BIND = st.builds(Bind, st.integers(0, 3), st.sampled_from([None, None, 50002, 1025]))
ACCEPT = st.builds(Accept, st.integers(0, 2), st.integers(0, 2), st.sampled_from([20, 40001]))
OTHER_OPS: st.SearchStrategy[Op] = st.one_of(
    *(BIND, BIND, ACCEPT, ACCEPT),
    st.builds(Fail, st.integers(0, 3)),
    st.builds(Connected, st.integers(0, 3)),
    st.builds(Finish, st.integers(0, 3), st.integers(0, 9999), st.integers(0, 99), st.booleans()),
    st.builds(Tick, DELTAS, st.booleans()),
    st.builds(Wait, DELTAS),
    st.builds(Feed, st.sampled_from([CLIENT, SERVER]), st.just(b"")),  # an EOF
    st.builds(Close, st.booleans()),
)
NOISE = st.binary(max_size=8).map(lambda data: data.replace(b"\0", b"?"))


def stream(side: Side) -> st.SearchStrategy[bytes]:
    """Mostly plausible lines, the first few of the vocabulary (the well-formed address lines)
    more often; a NUL among them, rarely; some noise."""
    vocabulary = CLIENT_LINES if side is CLIENT else SERVER_LINES
    lines = st.sampled_from((*vocabulary, b"\0"))
    return st.lists(
        st.one_of(st.sampled_from(vocabulary[:5]), lines, lines, NOISE), max_size=12
    ).map(b"".join)


# the usual order of things: the listener is bound (perhaps after failures), someone
# connects to it (the right peer, the other one, a stranger), the dial ends
EXCHANGE = st.builds(
    lambda fails, peer, port, end: [
        *[Fail(0)] * fails,
        Bind(0),
        Accept(0, peer, port),
        *([Connected(0)] if end else []),
        *([Finish(0, 100, 5)] if end > 1 else []),
    ],
    st.integers(0, 4),
    st.integers(0, 2),
    st.sampled_from([20, 40001]),
    st.integers(0, 2),
)


@st.composite
def runs(draw: st.DrawFn, tls: bool = False) -> tuple[Setup, list[Op]]:
    """Both sides' streams cut into chunks anywhere, interleaved with the other events;
    `tls`: somewhere in them the client sends AUTH and, after it, the server a 234."""
    streams = {side: bytearray(draw(stream(side))) for side in Side}
    if tls:
        for side, line in ((CLIENT, b"AUTH TLS\r\n"), (SERVER, b"234 go ahead\r\n")):
            at = draw(st.integers(0, len(streams[side])))
            streams[side][at:at] = line
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 40))):
        side = draw(st.sampled_from([CLIENT, SERVER]))
        choice = draw(st.integers(0, 9))
        if streams[side] and choice < 5:
            cut = draw(st.integers(1, len(streams[side])))
            ops.append(Feed(side, bytes(streams[side][:cut])))
            del streams[side][:cut]
        elif choice < 7:
            ops += draw(EXCHANGE)
        else:
            ops.append(draw(OTHER_OPS))
    ops += [Feed(side, bytes(rest)) for side, rest in streams.items() if rest]
    return draw(SETUPS), ops


@settings(max_examples=300, deadline=None)
@given(runs(tls=True))
def test_generated_tls_runs_keep_every_invariant(setup_and_ops: tuple[Setup, list[Op]]) -> None:
    """AUTH and a 234 at random places, cut anywhere, among every other event: the switch to
    TLS pass-through (or the 534 under `refuse`) keeps every invariant."""
    setup, ops = setup_and_ops
    r = run(setup, ops)
    for situation in sorted(r.checker.seen):
        event(situation)


@settings(max_examples=400, deadline=None)
@given(runs())
def test_generated_runs_keep_every_invariant(setup_and_ops: tuple[Setup, list[Op]]) -> None:
    setup, ops = setup_and_ops
    r = run(setup, ops)  # the checker raises InvariantViolation on the first broken step
    for situation in sorted(r.checker.seen):  # --hypothesis-show-statistics lists them
        event(situation)


def feed_all(setup: Setup, chunks: list[tuple[Side, bytes]]) -> list[Action]:
    """Every action of the run; consecutive sends to one side merged (what the wire sees:
    after a TLS switch bytes are passed on as they come, so chunking moves the cuts)."""
    r = Run(setup)
    for side, data in chunks:
        if data:  # b"" would be an EOF
            r.op(Feed(side, data))
    merged: list[Action] = []
    for action in (action for _, _, actions in r.trace for action in actions):
        last = merged[-1] if merged else None
        if isinstance(action, Send) and isinstance(last, Send) and last.side is action.side:
            merged[-1] = Send(action.side, last.data + action.data)
        else:
            merged.append(action)
    return merged


@settings(max_examples=300, deadline=None)
@given(client=stream(CLIENT), server=stream(SERVER), faces=st.integers(0, 3))
def test_whole_vs_byte_at_a_time(client: bytes, server: bytes, faces: int) -> None:
    setup = Setup(faces=faces, auto_bind=True)
    whole = feed_all(setup, [(CLIENT, client), (SERVER, server)])
    singles = [(CLIENT, client[i : i + 1]) for i in range(len(client))]
    singles += [(SERVER, server[i : i + 1]) for i in range(len(server))]
    assert feed_all(setup, singles) == whole
