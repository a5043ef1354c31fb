"""The kernel's per-direction sequence correction record (net/netfilter/nf_conntrack_seqadj.c).

How this works (`nf_ct_seqadj_set`, `nf_ct_seq_adjust`). A terminating proxy never fixes
sequence numbers, but ftpalg keeps the record the kernel would keep so logs, metrics and
tests can compare with it. Each direction holds (correction_pos, offset_before,
offset_after), signed 32-bit:

- record(S, delta): skipped when delta == 0; applied only when no correction is pending
  (before == after) or correction_pos is strictly before S; then pos = S, before = after,
  after = after + delta. Otherwise the delta is silently ignored (as the kernel does).
- a packet of this direction with seq s goes out as s + after if s is after pos, else + before.
- an ACK for this direction's data (carried by the other direction) is mapped back:
  ack - after if (ack - before) is after pos, else ack - before.
Positions are TCP sequence numbers in the sender's own numbering; ftpalg uses relative ones
(stream offset + 1, as Wireshark shows them).
"""

from __future__ import annotations

from dataclasses import dataclass

_MOD = 1 << 32


def seq_after(a: int, b: int) -> bool:
    """True if sequence number a is strictly after b (mod 2^32, like the kernel's after())."""
    diff = (a - b) % _MOD
    return 0 < diff < (1 << 31)


def _s32(value: int) -> int:
    value %= _MOD
    return value - _MOD if value >= (1 << 31) else value


@dataclass(slots=True)
class SeqCorrection:
    correction_pos: int = 0
    offset_before: int = 0
    offset_after: int = 0

    def record(self, seq: int, delta: int) -> bool:
        """Record a length change of `delta` at segment start `seq`; True if applied."""
        if delta == 0:
            return False
        pending = self.offset_before != self.offset_after
        if pending and not seq_after(seq, self.correction_pos):
            return False
        self.correction_pos = seq % _MOD
        self.offset_before = self.offset_after
        self.offset_after = _s32(self.offset_after + delta)
        return True

    def map_seq(self, seq: int) -> int:
        """What the receiver sees for a segment of this direction starting at `seq`."""
        if seq_after(seq, self.correction_pos):
            return (seq + self.offset_after) % _MOD
        return (seq + self.offset_before) % _MOD

    def map_ack(self, ack: int) -> int:
        """What the sender sees for an ACK (sent by the receiver) of this direction's data."""
        if seq_after((ack - self.offset_before) % _MOD, self.correction_pos):
            return (ack - self.offset_after) % _MOD
        return (ack - self.offset_before) % _MOD
