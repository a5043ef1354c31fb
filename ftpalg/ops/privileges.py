"""Dropping root: ``--user NAME`` keeps only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE.

How this works. The daemon does its root-only set-up first (bind the control listeners and
the metrics socket, open the xferlog, install routes and the nftables table), then, before the
event loop (and any thread) starts, `drop_privileges`:

1. removes every other capability from the bounding set (``PR_CAPBSET_DROP``), so nothing
   this process or its children ever exec can regain them;
2. ``PR_SET_KEEPCAPS`` 1, ``initgroups``/``setgid``/``setuid`` to the user: the permitted set
   survives the uid change, the effective set is emptied;
3. ``capset`` (libc via ctypes, capability ABI v3): effective = permitted = inheritable =
   {NET_ADMIN, NET_BIND_SERVICE};
4. raises both as *ambient* capabilities, so that ``nft`` run as a subprocess at exit (the
   teardown) has CAP_NET_ADMIN without file capabilities; the pyroute2 route/rule deletes
   run in-process with the effective set;
5. ``PR_SET_KEEPCAPS`` 0, then checks ``/proc/self/status`` (Uid, CapEff, CapPrm, CapAmb)
   and that ``setuid(0)`` fails — any surprise is an error, never a silent half-drop.

Why these two: transparent data listeners and dials from a non-local address need
IP_TRANSPARENT (CAP_NET_ADMIN), which is also what nftables/netlink changes need; an
active-mode dial from port 20 needs CAP_NET_BIND_SERVICE. CAP_NET_RAW is not needed.
"""

from __future__ import annotations

import ctypes
import os
import pwd

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
KEEP = (CAP_NET_ADMIN, CAP_NET_BIND_SERVICE)
KEEP_MASK = sum(1 << cap for cap in KEEP)
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_V3 = 0x20080522


class PrivilegeError(Exception):
    """Privileges could not be dropped as asked; ``str()`` is one line."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int, arg3: int = 0) -> int:
    return int(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0))


def _capset(mask: int) -> None:
    header = _Header(_CAP_V3, 0)
    data = (_Data * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = word
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict (Uid, Gid, CapEff, CapPrm, CapAmb, CapBnd, ...)."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def drop_privileges(user: str) -> None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"--user {user}: no such user") from None
    if os.geteuid() != 0:
        raise PrivilegeError(f"--user {user}: ftpalg must start as root to switch users")
    if pw.pw_uid == 0:
        raise PrivilegeError(f"--user {user}: that is root; name an unprivileged user")
    for cap in range(_last_cap() + 1):
        if cap not in KEEP:
            _check(_prctl(_PR_CAPBSET_DROP, cap), f"dropping capability {cap}")
    _check(_prctl(_PR_SET_KEEPCAPS, 1), "PR_SET_KEEPCAPS")
    try:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as exc:
        raise PrivilegeError(f"--user {user}: {exc.strerror or exc}") from None
    _capset(KEEP_MASK)
    for cap in KEEP:
        _check(_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap), f"ambient capability {cap}")
    _check(_prctl(_PR_SET_KEEPCAPS, 0), "PR_SET_KEEPCAPS")
    _verify(pw.pw_uid)


def _verify(uid: int) -> None:
    status = proc_status()
    uids = {int(x) for x in status["Uid"].split()}
    caps = {k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapAmb", "CapBnd")}
    if uids != {uid} or any(v != KEEP_MASK for v in caps.values()):
        raise PrivilegeError(
            f"privileges not dropped as expected: Uid {status['Uid']}, "
            + ", ".join(f"{k} {v:016x}" for k, v in caps.items())
        )
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("privileges not dropped: setuid(0) succeeded")
