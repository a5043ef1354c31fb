"""Judging one case: what each path delivered, against the case's class and outcome specs.

How this works. An `Observation` is what the two scripted peers recorded for one case on one
path: the bytes the server received after the USER line and the bytes the client received
after the USER reply (plus a client-side error, if any). For a client case the delivered text
is what the server received; for a server case it is what the client received. Verdicts:

- `ok`: mirror cases delivered byte-identical results on both paths (server and client side)
  and the kernel did what the case says; deviation/stall cases: the kernel did what the case
  says and ftpalg did what docs/core.md says;
- `MISMATCH`: a mirror case where ftpalg's bytes differ from the kernel's;
- `KERNEL-UNEXPECTED`: the kernel did not do what the case says;
- `FTPALG-UNEXPECTED`: a deviation/stall case where ftpalg did not do its documented thing;
- `ERROR`: a peer failed (no banner, connection refused, ...).

A case marked `xfail` (a known difference waiting for a decision) that fails is `XFAIL`; one
that passes is `XPASS`, so the mark gets removed. Any verdict but `ok`/`XFAIL` fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpalg.parity.cases import MIRROR, Expect, Rendered

OK_REPLY = b"200 ok\r\n"  # the scripted server's answer to every ordinary line


@dataclass(frozen=True)
class Observation:
    to_server: bytes  # what the server received after the USER line
    to_client: bytes  # what the client received after the USER reply
    error: str | None = None
    late_to_server: bytes = b""  # what the server received after the client reset


@dataclass(frozen=True)
class CaseResult:
    case: Rendered
    kernel: Observation
    ftpalg: Observation
    verdict: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in ("ok", "XFAIL")


def delivered(case: Rendered, obs: Observation) -> bytes:
    return obs.to_server if case.side == "client" else obs.to_client


def _delivered_exactly(case: Rendered, obs: Observation, text: bytes) -> bool:
    if case.side == "client":  # the server answers each line it gets with 200 ok
        return obs.to_server == text and obs.to_client == OK_REPLY * text.count(b"\n")
    return obs.to_server == case.trigger and obs.to_client == text


def meets(spec: Expect, case: Rendered, obs: Observation) -> bool:
    """True if the observation is what the spec says (never called for `same`)."""
    if obs.error is not None:
        return False
    if spec.kind == "any":
        return True
    if spec.kind == "exact":
        return _delivered_exactly(case, obs, spec.text)
    if spec.kind == "unchanged":
        return _delivered_exactly(case, obs, case.data)
    if spec.kind == "nothing":
        if case.side == "server":
            return obs.to_server == case.trigger and obs.to_client == b""
        return obs.to_server == b"" and obs.to_client == b""
    if spec.kind == "reply":
        reply = obs.to_client
        return (
            case.side == "client"
            and obs.to_server == b""
            and reply.startswith(spec.code + b" ")
            and reply.endswith(b"\r\n")
            and reply.count(b"\n") == 1
        )
    raise ValueError(f"cannot check spec {spec}")


def judge(case: Rendered, kernel: Observation, ftpalg: Observation) -> CaseResult:
    result = _judge(case, kernel, ftpalg)
    if not case.xfail:
        return result
    if result.verdict == "ok":
        return CaseResult(case, kernel, ftpalg, "XPASS", f"marked xfail: {case.xfail}")
    detail = f"{case.xfail} ({result.verdict}: {result.detail})"
    return CaseResult(case, kernel, ftpalg, "XFAIL", detail)


def _judge(case: Rendered, kernel: Observation, ftpalg: Observation) -> CaseResult:
    for name, obs in (("kernel", kernel), ("ftpalg", ftpalg)):
        if obs.error is not None:
            return CaseResult(case, kernel, ftpalg, "ERROR", f"{name}: {obs.error}")
    if not meets(case.kernel, case, kernel):
        return CaseResult(case, kernel, ftpalg, "KERNEL-UNEXPECTED", f"expected {case.kernel}")
    if case.cls == MIRROR:
        if (kernel.to_server, kernel.to_client) != (ftpalg.to_server, ftpalg.to_client):
            return CaseResult(case, kernel, ftpalg, "MISMATCH", "ftpalg differs from kernel")
        return CaseResult(case, kernel, ftpalg, "ok")
    if not meets(case.ftpalg, case, ftpalg):
        return CaseResult(case, kernel, ftpalg, "FTPALG-UNEXPECTED", f"expected {case.ftpalg}")
    return CaseResult(case, kernel, ftpalg, "ok")
