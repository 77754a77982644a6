"""One MQTT broker connection kept up by trio; paho-mqtt does the protocol.

paho-mqtt 2.x can run without a thread of its own: the caller waits for the
socket and calls ``loop_read``, ``loop_write`` and ``loop_misc``. Here:

* ``connect`` opens the socket in a worker thread (paho's ``connect`` blocks
  on DNS, TCP and the TLS handshake), abandoned if cancelled;
* ``pump`` runs three tasks on the open socket: a reader
  (``wait_readable`` then ``loop_read``), a writer (``wait_writable`` then
  ``loop_write`` while paho has bytes queued) and a one-second tick
  (``loop_misc``: keepalive pings and their timeout);
* ``run`` connects, pumps, and reconnects with back-off, forever.

Invariants: paho is only ever called from the trio thread once ``connect``
returned (its callbacks, ``on_connect`` and ``on_message``, run in the
reader task); each connection attempt gets a new paho client, so an
abandoned attempt can never touch the live one; before paho closes the
socket, :func:`trio.lowlevel.notify_closing` wakes the tasks waiting on it.

MQTT 3.1.1, clean sessions, QoS 0 by default: the state this package carries
(retained messages, the will) is re-sent on each connection.
"""

from __future__ import annotations

import select
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from paho_trio.broker import Broker, read_credentials

_TICK = 1.0
_MAX_PENDING_READS = 64


class MqttError(Exception):
    """Root of the errors this package raises on purpose."""


class MqttUnavailable(MqttError):
    """The broker cannot be reached, refused us, or the connection was lost.

    Transient: :meth:`MqttClient.run` retries with back-off; callers of
    :meth:`MqttClient.connect` and :meth:`MqttClient.pump` may retry. The
    lower-level error, if any, is in ``__cause__``.
    """


@dataclass(frozen=True)
class Message:
    """A message received on a subscribed topic."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Will:
    """The last will: the broker publishes it if we vanish without DISCONNECT.

    On a clean stop :meth:`MqttClient.run` publishes it itself before
    disconnecting (a clean DISCONNECT makes the broker drop the will), so
    subscribers see it either way.
    """

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 0


class MqttClient:
    """A client of one broker; see the module docstring.

    ``on_connect()`` runs after each accepted CONNACK, once the
    subscriptions were re-sent (publish what subscribers must see after a
    reconnect there); ``on_message(msg)`` for each message received. Both
    run inside paho's read loop: they must not block or raise.
    """

    def __init__(self, broker: Broker, *, client_id: str, will: Will | None = None,
                 credentials_file: str | None = None, keepalive: int = 30,
                 connect_timeout: float = 10.0, min_delay: float = 1.0, max_delay: float = 60.0,
                 on_connect: Callable[[], None] | None = None,
                 on_message: Callable[[Message], None] | None = None) -> None:
        if keepalive < 2 or connect_timeout <= 0 or not 0 < min_delay <= max_delay:
            raise ValueError("need keepalive >= 2, connect_timeout > 0, 0 < min_delay <= max_delay")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.broker = broker
        self.client_id = client_id
        self.will = will
        self.credentials_file = credentials_file
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.on_connect = on_connect
        self.on_message = on_message
        self.subscriptions: list[str] = []
        self.connected = False
        """True between an accepted CONNACK and the loss of that connection."""
        self.connects = 0
        """Connections the broker accepted since this object was made."""
        self.failures = 0
        """Connection attempts that failed, and connections lost."""
        self.last_error: str | None = None
        self.received = 0
        self.sent = 0
        self._client: paho.Client | None = None
        self._wake = trio.Event()
        self._state_changed = trio.Event()

    # --- what callers use -------------------------------------------------

    def subscribe(self, topic: str) -> None:
        """Subscribe to ``topic`` (wildcards allowed) now if connected, and on each connect."""
        if topic in self.subscriptions:
            return
        self.subscriptions.append(topic)
        if self.connected and self._client is not None:
            self._client.subscribe(topic)
            self._wake_writer()

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 0) -> bool:
        """Queue a message; False (and nothing queued) while not connected."""
        if not self.connected or self._client is None:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        self._wake_writer()
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self.sent += 1
        return True

    async def wait_state_change(self) -> None:
        """Return at the next connect or disconnect."""
        await self._state_changed.wait()

    # --- connection -------------------------------------------------------

    async def connect(self) -> None:
        """Open a new connection and send CONNECT; :meth:`pump` then waits for CONNACK.

        Raises :class:`MqttUnavailable` if the broker cannot be reached, the
        TLS handshake fails or the credentials file cannot be read.
        """
        self._discard()
        client = self._new_client()
        lock = threading.Lock()
        finished = abandoned = False

        def attempt() -> None:
            nonlocal finished
            try:
                if self.broker.tls:
                    client.tls_set_context(_tls_context(self.broker))
                if self.credentials_file is not None:
                    user, password = read_credentials(self.credentials_file)
                    client.username_pw_set(user, password)
                rc = client.connect(self.broker.host, self.broker.port, self.keepalive)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise OSError(f"CONNECT not sent: {paho.error_string(rc)}")
            finally:
                with lock:
                    finished = True
                    if abandoned:
                        _close_socket(client)

        try:
            await trio.to_thread.run_sync(attempt, abandon_on_cancel=True)
        except trio.Cancelled:
            with lock:
                abandoned = True
                if finished:
                    _close_socket(client)
            raise
        except (OSError, ValueError, ssl.SSLError) as exc:
            _close_socket(client)
            self.failures += 1
            self.last_error = f"{self.broker.address}: {exc}"
            raise MqttUnavailable(self.last_error) from exc
        client.on_socket_close = _notify_closing
        self._client = client

    async def pump(self, *, until: Callable[[], bool] | None = None) -> None:
        """Serve the open connection until it ends, or until ``until()`` holds.

        ``until`` is checked whenever everything received so far has been
        read; once it returns True, ``pump`` returns with the connection
        still open (call again to go on). Without ``until`` it returns only
        by raising :class:`MqttUnavailable` (the connection was lost, never
        opened, refused by the broker, or its keepalive expired); the
        connection is then closed.
        """
        client = self._client
        sock = client.socket() if client is not None else None
        if client is None or sock is None:
            raise MqttUnavailable(f"{self.broker.address}: not connected")
        lost: list[str] = []
        async with trio.open_nursery() as nursery:

            def end(reason: str | None) -> None:
                if reason is not None:
                    lost.append(reason)
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._writer, client, sock, end)
            nursery.start_soon(self._ticker, client, end)
            await self._reader(client, sock, until, end)
        if lost:
            self._lose(lost[0])
            raise MqttUnavailable(lost[0])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected until cancelled: connect, pump, wait, retry.

        The wait doubles from :attr:`min_delay` to :attr:`max_delay` seconds
        after each failure and starts again from :attr:`min_delay` once a
        connection was accepted. Starts at once (not waiting for the broker). When
        cancelled, publishes the will and disconnects cleanly, within two
        seconds.
        """
        task_status.started()
        delay = self.min_delay
        try:
            while True:
                before = self.connects
                try:
                    await self.connect()
                    await self.pump()
                except MqttUnavailable:
                    pass  # last_error says why
                delay = self.min_delay if self.connects > before else min(self.max_delay, delay * 2)
                await trio.sleep(delay)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Publish the will (if connected), send DISCONNECT, close; at most two seconds."""
        client = self._client
        if client is not None and self.connected:
            with trio.move_on_after(2.0):
                if self.will is not None:
                    client.publish(self.will.topic, self.will.payload, qos=0, retain=self.will.retain)
                client.disconnect()
                for _ in range(1000):  # bounded: each round writes or waits for room
                    sock = client.socket()
                    if sock is None or not client.want_write():
                        break
                    await trio.lowlevel.wait_writable(sock)
                    client.loop_write()
        self._discard()

    # --- internals --------------------------------------------------------

    def _new_client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=MQTTProtocolVersion.MQTTv311,
                             reconnect_on_failure=False)
        client.connect_timeout = self.connect_timeout
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=self.will.qos,
                            retain=self.will.retain)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"{self.broker.address} refused the connection: {reason}"
            return  # paho returns an error from loop_read: the reader ends the connection
        self.connected = True
        self.connects += 1
        self.last_error = None
        for topic in self.subscriptions:
            client.subscribe(topic)
        self._changed()
        if self.on_connect is not None:
            self.on_connect()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received += 1
        if self.on_message is not None:
            self.on_message(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _wake_writer(self) -> None:
        self._wake.set()

    def _changed(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    async def _reader(self, client: paho.Client, sock: Any, until: Callable[[], bool] | None,
                      end: Callable[[str | None], None]) -> None:
        while True:
            if until is not None and until() and not _readable_now(sock):
                end(None)
                return
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                end(self.last_error or f"{self.broker.address}: connection closed")
                return
            rc = client.loop_read()
            # TLS: a record may hold more than paho read; the socket would not wake us for it.
            for _ in range(_MAX_PENDING_READS):
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not _tls_pending(client.socket()):
                    break
                rc = client.loop_read()
            # Callbacks (CONNACK's subscriptions, on_connect's publishes) queue
            # bytes without writing them: paho holds its callback lock then.
            self._wake_writer()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                end(self.last_error or f"{self.broker.address}: connection lost "
                                       f"({paho.error_string(rc)})")
                return

    async def _writer(self, client: paho.Client, sock: Any, end: Callable[[str | None], None]) -> None:
        while True:
            if not client.want_write():
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            try:
                await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, OSError):
                end(f"{self.broker.address}: connection closed")
                return
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                end(f"{self.broker.address}: connection lost ({paho.error_string(rc)})")
                return

    async def _ticker(self, client: paho.Client, end: Callable[[str | None], None]) -> None:
        started = trio.current_time()
        while True:
            await trio.sleep(_TICK)
            if not self.connected and trio.current_time() - started > self.connect_timeout:
                end(f"{self.broker.address}: no CONNACK within {self.connect_timeout:g} s")
                return
            rc = client.loop_misc()
            self._wake_writer()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                end(f"{self.broker.address}: no answer within the keepalive ({self.keepalive} s)")
                return

    def _lose(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self._discard()

    def _discard(self) -> None:
        """Forget the current connection, closing its socket."""
        client, self._client = self._client, None
        if client is not None:
            _close_socket(client)
        if self.connected:
            self.connected = False
            self._changed()


def _tls_context(broker: Broker) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=broker.ca_file)
    if broker.cert_file is not None:
        context.load_cert_chain(broker.cert_file, broker.key_file)
    return context


def _notify_closing(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho is about to close ``sock``: wake the tasks waiting on it."""
    try:
        trio.lowlevel.notify_closing(sock)
    except (RuntimeError, OSError, ValueError):
        # Outside trio (an abandoned connect's thread, the garbage collector)
        # or already closed: nobody waits on it.
        pass


def _close_socket(client: paho.Client) -> None:
    sock = client.socket()
    if sock is None:
        return
    _notify_closing(client, None, sock)
    sock.close()


def _readable_now(sock: Any) -> bool:
    if _tls_pending(sock):
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


def _tls_pending(sock: Any) -> bool:
    pending = getattr(sock, "pending", None)
    return bool(pending is not None and pending() > 0)
