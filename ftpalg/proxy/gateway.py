"""The gateway: control listeners, session admission, upstream connect, data dials, shutdown.

How this works. Each accepted control connection is paused while ftpalg connects upstream:
in transparent mode to the connection's original destination (`getsockname()` of the
accepted socket), in reverse mode to the fixed `--upstream`. A transparent connection whose
original destination is the gateway itself has no upstream and gets 421 (never a connection
back to ftpalg). NAT64 (`nat64_prefix`, docs/nat64.md): an IPv6 original destination inside
the prefix stands for the IPv4 address embedded in it (RFC 6052); ftpalg dials that over
IPv4 from its own address (`source_transparent` cannot apply across families), and an
embedded address of the gateway itself gets the same 421. When the upstream stands, the
four faces are known and a `ControlSession` starts. Every refusal goes through
`refusal.refuse`. A client that resets before its session stands (a port scan) costs one
`client_gone` line and nothing else. Data relays run as gateway-owned tasks so they finish
even after their control session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ftpalg.core import policy as P
from ftpalg.core.messages import Endpoint, Side
from ftpalg.core.nat64 import translated
from ftpalg.core.observations import Refusal
from ftpalg.core.rfc6052 import extract
from ftpalg.core.session import Faces, Session
from ftpalg.kernel.nft import forward_blocked
from ftpalg.ops.config import Config
from ftpalg.ops.events import Failed, Fault, SessionOpened, SessionRefused, UpstreamConnectFailed
from ftpalg.ops.logs import get_logger
from ftpalg.ops.observer import Observer
from ftpalg.proxy import tls_context
from ftpalg.proxy.acceptor import Acceptor
from ftpalg.proxy.control import ControlSession, HalfProtocol
from ftpalg.proxy.kernel_plane import KernelData, KernelPlane
from ftpalg.proxy.refusal import refuse
from ftpalg.proxy.relay import Handoff
from ftpalg.proxy.relay_plane import DataPlane
from ftpalg.proxy.sockets import (
    connect,
    endpoint,
    is_local_address,
    make_dial_socket,
    set_control_options,
    stream_socket,
    watch_local_addresses,
)
from ftpalg.proxy.tls_plane import TlsRelayPlane
from ftpalg.proxy.tls_upgrade import implicit_tls
from ftpalg.proxy.tls_upstream import (
    SecuredUpstream,
    UpstreamTlsError,
    secure_upstream,
    upstream_attached,
)

_ADDRESS_TAKEN = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
NAT64_RELAY = "an IPv6 client with an IPv4 server: the kernel data plane cannot join families"


def tls_mode(config: Config) -> str:
    """`auto`: FTPS passes through in transparent mode (as the kernel helper lets it); in
    reverse mode an encrypted 227 would name the server's private address: refuse."""
    if config.tls != "auto":
        return config.tls
    return "passthrough" if config.transparent else "refuse"


def core_policy(config: Config) -> P.CorePolicy:
    return P.CorePolicy(
        loose=config.loose,
        allow_low_data_ports=config.allow_low_data_ports,
        data_ports=config.data_ports,
        expect_timeout=config.expect_timeout,
        idle_timeout=config.idle_timeout,
        line_timeout=config.line_timeout,
        max_line=config.max_line,
        strict_data_ports=not config.transparent,
        announce=config.announce_address,
        tls=tls_mode(config),
        require_tls=config.require_tls,
        data_policy=config.data_policy,
    )


class Gateway:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        observe: Observer | None = None,
        kernel_data: KernelData | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.kernel_data = kernel_data  # the kernel data plane, when it carries data
        self.handoff = handoff  # the relay worker process (relay_worker.py), when there is one
        self.kernel_blocked: str | None = None  # why new sessions use the relay instead
        self.config = config
        self.policy = core_policy(config)
        self.loop = loop
        self.rng = random.SystemRandom()
        self.observe = observe or Observer(get_logger())
        self.log = self.observe.log  # plain lines that no metric needs
        self.sessions: set[ControlSession] = set()
        self.admitting = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.data_tasks: set[asyncio.Task[None]] = set()
        self.acceptors: list[Acceptor] = []
        self._ids = 0
        self._conn_ids = 0
        self.accepting = True

    async def start(self, listeners: list[socket.socket]) -> None:
        watch_local_addresses()  # is_local_address: no bind test per session
        for sock in listeners:
            acceptor = Acceptor(self.loop, sock, self.client_connected, self.observe)
            acceptor.start()
            self.acceptors.append(acceptor)
        self._nat64_note()

    def _nat64_note(self) -> None:
        """With the kernel data plane: say once that NAT64 sessions use the relay."""
        if self.kernel_data is not None and self.config.nat64_prefix is not None:
            self.log.info(
                "data_plane_relay",
                sessions=f"nat64 ({self.config.nat64_prefix})",
                reason=NAT64_RELAY,
            )

    def default_plane(self) -> str:
        """The plane that carries a session's data unless the session needs the relay (the
        `started` line): tls = terminate relays every session (its data may be TLS)."""
        usable = self.kernel_data is not None and self.policy.tls != "terminate"
        return "kernel" if usable else "relay"

    def _plane_factory(
        self, faces: Faces
    ) -> tuple[str, Callable[[ControlSession], DataPlane] | None]:
        """A new session's data plane, by name: the kernel's when the gateway has one that
        may be used (with the factory that makes it), else the relay (None: the default).
        The relay carries instead for an IPv6 client with an IPv4 server (NAT64, either
        mode: nftables cannot join the families) and, in reverse mode, for a client or server
        on this host (its packets never pass prerouting, where the pinholes are)."""
        data = self.kernel_data
        if self.policy.tls == "terminate":  # TLS data: ftpalg decrypts (tls_plane.py)
            context, client = tls_context.context_for(self.config), faces.client.host
            return "relay", lambda control: TlsRelayPlane(
                self, control.handle, control.observe, context, client
            )
        if data is None or self.kernel_blocked is not None:
            return "relay", None
        if self.policy.data_policy != "client":  # the kernel cannot join two of its own
            return "relay", None
        if faces.client.host.version != faces.server.host.version:
            return "relay", None  # NAT64 (either mode): nftables cannot join the families
        if self.config.upstream is not None and (
            is_local_address(faces.client.host) or is_local_address(faces.server.host)
        ):
            return "relay", None
        timeout_ms = int(self.policy.expect_timeout * 1000)
        life = self.policy.idle_timeout  # a TLS data window: refreshed while the session lives
        return "kernel", lambda control: KernelPlane(
            data, control.handle, self.next_conn_id, timeout_ms, life
        )

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: new settings apply to sessions opened from now on; the kernel data plane's
        check of foreign forward chains runs again (docs/data-plane.md)."""
        nat64_before = self.config.nat64_prefix
        self.config, self.policy = config, core_policy(config)
        if config.nat64_prefix != nat64_before:
            self._nat64_note()
        if self.kernel_data is not None:
            self.check_forward_chains()

    def check_forward_chains(self) -> None:
        """A foreign forward chain that drops what the pinholes admit: with `auto`, new
        sessions use the relay until it is fixed (a warning says which rule is missing);
        with `kernel` forced, an error says so and the kernel plane stays."""
        why = forward_blocked()
        if why is None:
            if self.kernel_blocked is not None:
                self.log.info("data_plane_kernel", reason="the forward chains accept the tag")
            self.kernel_blocked = None
        elif self.config.data_plane == "kernel":
            self.log.error("data_plane_blocked", reason=why)
        else:
            self.kernel_blocked = why
            self.log.warning("data_plane_relay", reason=why)

    def next_conn_id(self) -> int:
        self._conn_ids += 1
        return self._conn_ids

    def spawn(self, coro: Coroutine[Any, Any, None], data: bool = False) -> None:
        """Run a gateway-owned task (`data`: a relay, which shutdown lets finish)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        if data:
            self.data_tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.data_tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.observe(Failed(Fault.INTERNAL, f"{type(exc).__name__}: {exc}"))

    # ---- admission ------------------------------------------------------------------------

    def client_connected(self, conn: socket.socket, peer: Any) -> None:
        """A control connection was accepted (`peer` as accept() returned it: the socket
        may already be reset, and then its own peer name is gone)."""
        client = endpoint(peer)
        if not self.accepting or len(self.sessions) + self.admitting >= self.config.max_sessions:
            reply = P.SHUTTING_DOWN if not self.accepting else P.TOO_MANY_SESSIONS
            refuse(conn, reply, Refusal.LIMITS, client, self.observe)
            return
        self.admitting += 1
        self.spawn(self._admit(conn, client))

    async def _admit(self, conn: socket.socket, client: Endpoint) -> None:
        try:
            await self._open_session(conn, client)
        finally:
            self.admitting -= 1

    async def _upstream_for(self, local: Endpoint) -> Endpoint | None:
        upstream = self.config.upstream
        if upstream is not None:
            infos = await self.loop.getaddrinfo(
                upstream.host, upstream.port, type=socket.SOCK_STREAM
            )
            return endpoint(infos[0][4])
        target = self._nat64_target(local)
        if target is None or is_local_address(target.host):
            return None  # addressed to the gateway itself: no upstream (never loop back)
        return target

    def _nat64_target(self, local: Endpoint) -> Endpoint | None:
        """The original destination, or inside the NAT64 prefix the IPv4 address embedded in
        it (same port); None for an address in the prefix that embeds none (RFC 6052: u
        octet or suffix not zero)."""
        prefix = self.config.nat64_prefix
        if prefix is None or local.host.version != 6 or local.host not in prefix:
            return local
        ipv4 = extract(prefix, local.host)
        return None if ipv4 is None else Endpoint(ipv4, local.port)

    def _client_gone(self, conn: socket.socket, client: Endpoint, stage: str, exc: Any) -> None:
        """The client left (reset) before its session stood: one line, nothing kept."""
        conn.close()
        error = getattr(exc, "strerror", None) or str(exc)
        self.log.info("client_gone", client=str(client), stage=stage, error=error)

    async def _open_session(self, conn: socket.socket, client: Endpoint) -> None:
        self._ids += 1
        sid = f"{self._ids:x}"
        observe = self.observe.bind(session=sid, client=str(client))
        try:
            local = endpoint(conn.getsockname())
            conn.getpeername()  # ENOTCONN once the client reset: no upstream dial for it
            set_control_options(conn)
        except OSError as exc:
            return self._client_gone(conn, client, "accept", exc)
        try:
            upstream = await self._upstream_for(local)
        except OSError as exc:
            reply = P.upstream_failed(f"resolve: {exc}")
            refuse(conn, reply, Refusal.UPSTREAM, None, observe)
            return
        if upstream is None:
            refuse(conn, P.NO_UPSTREAM, Refusal.NO_UPSTREAM, None, observe)
            return
        source = None  # from the gateway's own address, unless source_transparent
        if self.config.source_transparent and upstream.host.version == client.host.version:
            source = Endpoint(client.host, 0)  # NAT64: an IPv6 client cannot be an IPv4 source
        started = self.loop.time()
        try:
            up_sock = await self.dial(upstream, source)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            observe(UpstreamConnectFailed(upstream, reason))
            refuse(conn, P.upstream_failed(reason), Refusal.UPSTREAM, None, observe)
            return
        try:
            set_control_options(up_sock)
            faces = Faces(client, upstream, local, endpoint(up_sock.getsockname()))
        except OSError as exc:
            up_sock.close()
            reply = P.upstream_failed(exc.strerror or str(exc))
            refuse(conn, reply, Refusal.UPSTREAM, None, observe)
            return
        secured = None
        if self.config.tls_upstream:  # FTPS to the server first (tls_upstream.py)
            try:
                secured = await secure_upstream(
                    self.loop,
                    up_sock,
                    tls_context.upstream_context(self.config),
                    self.config.upstream.host if self.config.upstream else None,
                    self.config.connect_timeout,
                )
            except UpstreamTlsError as exc:
                observe(UpstreamConnectFailed(upstream, str(exc)))
                refuse(conn, P.upstream_failed(str(exc)), Refusal.UPSTREAM, None, observe)
                return
        await self._start_session(conn, up_sock, faces, observe, started, secured)
        return None

    async def _start_session(
        self,
        conn: socket.socket,
        up_sock: socket.socket,
        faces: Faces,
        observe: Observer,
        started: float,
        secured: SecuredUpstream | None = None,
    ) -> None:
        """Both connections stand: wire them to a new ControlSession. The client half is
        attached first and paused, so the server's banner finds it; reading resumes last."""
        core = Session(faces, self.policy, started, self.rng)
        plane, make_plane = self._plane_factory(faces)  # chosen once: the log says what carries
        observe = observe.bind(data_plane=plane)
        control = ControlSession(self, core, observe, make_plane)
        tls = implicit_tls(self.config, faces.server_face, core, control)  # implicit FTPS
        half = HalfProtocol(None, Side.CLIENT)  # kept: uvloop returns its own SSLProtocol
        try:
            await self.loop.connect_accepted_socket(lambda: half, sock=conn, **tls)
        except OSError as exc:
            if secured is not None:
                secured.leg.abort()  # its transport owns up_sock
            up_sock.close()
            return self._client_gone(conn, faces.client, "session", exc)
        control.attach(Side.CLIENT, half)
        try:
            if secured is None:
                await self.loop.create_connection(
                    lambda: HalfProtocol(control, Side.SERVER), sock=up_sock
                )
            elif not upstream_attached(control, secured, HalfProtocol(control, Side.SERVER)):
                raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
        except OSError as exc:  # the upstream socket broke between connect and now
            up_sock.close()
            reply = P.upstream_failed(exc.strerror or str(exc))
            if (transport := half.writable()) is not None:
                transport.write(reply)
                transport.close()
            observe(SessionRefused(Refusal.UPSTREAM, reply, None))
            return None
        self.sessions.add(control)
        mode = "reverse" if self.config.upstream else "transparent"
        connect_ms = round((self.loop.time() - started) * 1000, 3)
        nat64 = translated(faces.client.host, faces.server.host)  # RFC 6384: core/nat64.py
        opened = SessionOpened(
            faces.server, faces.server_face, faces.client_face, mode, connect_ms, nat64
        )
        observe(opened)
        half.start(control)
        return None

    def session_ended(self, control: ControlSession) -> None:
        self.sessions.discard(control)

    # ---- dialing --------------------------------------------------------------------------

    async def dial(self, target: Endpoint, source: Endpoint | None) -> socket.socket:
        """Connect to `target` from `source` (None: any local address); port 0 = any.

        A source port that cannot be used (in use, or the 4-tuple taken) falls back to any.
        """
        if source is None:
            family = socket.AF_INET6 if target.host.version == 6 else socket.AF_INET
            sock = stream_socket(family)
        else:
            try:
                sock = make_dial_socket(source.host, source.port, transparent=True)
            except OSError:
                if source.port == 0:
                    raise
                return await self.dial(target, Endpoint(source.host, 0))
        try:
            address = (str(target.host), target.port)
            await connect(self.loop, sock, address, self.config.connect_timeout)
        except TimeoutError:
            sock.close()
            raise OSError(f"timed out after {self.config.connect_timeout:g} s") from None
        except OSError as exc:
            sock.close()
            if source is not None and source.port != 0 and exc.errno in _ADDRESS_TAKEN:
                return await self.dial(target, Endpoint(source.host, 0))
            if exc.errno:  # the loop's text is "Connect call failed ('addr', port)": say why
                raise OSError(exc.errno, os.strerror(exc.errno)) from None
            raise
        return sock

    # ---- shutdown -------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let running transfers finish within `grace`, then close all."""
        self.accepting = False
        for acceptor in self.acceptors:
            acceptor.close()
        running: set[asyncio.Future[None]] = set(self.data_tasks)
        kernel = self.kernel_data.running if self.kernel_data is not None else {}
        if running or kernel:  # relays, and transfers the kernel carries
            self.log.info("draining", transfers=len(running) + len(kernel), grace_seconds=grace)
            if kernel and self.kernel_data is not None:
                running.add(asyncio.ensure_future(self.kernel_data.drained()))
            _, pending = await asyncio.wait(running, timeout=grace)
            for waiter in pending - self.data_tasks:
                waiter.cancel()
        for control in list(self.sessions):
            control.close("gateway shutting down", P.SHUTTING_DOWN)
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.log.info("stopped")
