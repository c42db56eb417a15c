"""The MQTT link: the only module that imports paho-mqtt.

One paho client per link, connected in the background with exponential reconnect
backoff. Subscriptions are renewed in every ``on_connect`` (a clean start forgets them),
so a reconnect never silently stops command handling. :meth:`MqttLink.publish` returns
a :class:`Delivery` that resolves when the broker acknowledges (QoS 1 PUBACK) — the only
evidence the publisher trusts before it lets go of a session.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_recorder.config import MqttConfig
from edge_recorder.errors import ConfigError

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 10  # notice a returning broker within seconds
REDELIVER_AFTER_S = 2.0  # a message a handler could not take is asked for again this late
MAX_PASSWORD_FILE_BYTES = 4096  # a password file is one line


class NotTaken(Exception):
    """Raised by a handler that could not take a message (it could not store it): with
    ``manual_ack`` the message is not acknowledged, so the broker delivers it again."""


@dataclass(frozen=True)
class Credentials:
    """What the files named in ``mqtt`` hold: the password and a TLS context."""

    password: str | None = None
    tls: ssl.SSLContext | None = None


def read_credentials(settings: MqttConfig) -> Credentials:
    """Read ``mqtt.password_file`` and load the ``mqtt.tls`` files, as a connection needs them.

    ``check-config``, ``run`` and a reload all call this, so a file one of them accepts the
    others accept too. Raises :class:`ConfigError` naming the key.
    """
    password = None
    if settings.username is not None and settings.password_file is not None:
        path = settings.password_file
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_PASSWORD_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError([f"mqtt.password_file: cannot read {path} "
                               f"({exc.strerror or exc})"]) from None
        if len(raw) > MAX_PASSWORD_FILE_BYTES:
            raise ConfigError([f"mqtt.password_file: {path} is over {MAX_PASSWORD_FILE_BYTES} "
                               "bytes; it should hold only the password"])
        try:
            password = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError([f"mqtt.password_file: {path} is not UTF-8 text"]) from None
    context = None
    if settings.tls is not None:
        t = settings.tls
        for key, file in (("ca_file", t.ca_file), ("cert_file", t.cert_file),
                          ("key_file", t.key_file)):
            if file is not None and not Path(file).is_file():
                raise ConfigError([f"mqtt.tls.{key}: {file} is not a readable file"])
        try:  # as paho's tls_set: verify the broker against ca_file (or the system's CAs)
            context = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError([f"mqtt.tls.ca_file: {t.ca_file} cannot be used "
                               f"({type(exc).__name__}: {exc})"]) from None
        if t.cert_file is not None:
            try:
                context.load_cert_chain(str(t.cert_file),
                                        str(t.key_file) if t.key_file else None)
            except (OSError, ValueError) as exc:
                raise ConfigError([f"mqtt.tls.cert_file: {t.cert_file} with key_file "
                                   f"{t.key_file} cannot be used ({type(exc).__name__}: "
                                   f"{exc})"]) from None
    return Credentials(password, context)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None


Handler = Callable[[Message], None]


class Delivery:
    """The fate of one QoS 1 publish: acknowledged, refused by the broker, or not yet known."""

    def __init__(self, link: MqttLink, mid: int | None, error: str | None = None) -> None:
        self._link = link
        self.mid = mid
        self.done = mid is None
        self.error = error

    def wait(self, timeout_s: float) -> bool:
        """True once the broker acknowledged it without error; False on timeout or refusal."""
        deadline = time.monotonic() + timeout_s
        with self._link._acked:
            while not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._link._acked.wait(left)
        return self.error is None



def topic_filter(subscription: str) -> str:
    """The topic filter of a subscription: ``$share/{group}/{filter}`` matches as ``{filter}``
    (MQTT 5 §4.8.2; the broker delivers shared messages under their own topic)."""
    if subscription.startswith("$share/"):
        parts = subscription.split("/", 2)
        return parts[2] if len(parts) == 3 else subscription
    return subscription

class MqttLink:
    def __init__(
        self,
        settings: MqttConfig,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        persistent_session_s: int | None = None,
        max_inbound_bytes: int | None = None,
        credentials: Credentials | None = None,
        on_connect: Callable[[], None] | None = None,
        name: str = "mqtt",
        manual_ack: bool = False,
        unreachable_hint: str | None = None,
    ) -> None:
        """``persistent_session_s``: keep the broker-side session (subscriptions and queued
        QoS 1 messages) for that long across disconnects, as the collector needs.

        ``manual_ack``: acknowledge a QoS 1 message only after every handler returned. When a
        handler raises, the message is left unacknowledged and, ``REDELIVER_AFTER_S`` later,
        the connection is dropped and made again, so the broker (holding the persistent
        session) delivers it again — MQTT resends unacknowledged messages only on a new
        connection. Without it paho acknowledges as soon as the handler returns.

        ``unreachable_hint``: what to check and what happens meanwhile when the broker
        cannot be reached, in the words of the program using the link (the daemon's by
        default: its config keys, its sessions kept on disk).

        ``max_inbound_bytes``: MQTT 5's Maximum Packet Size, so the broker drops larger
        messages instead of sending them (paho would hold any size in memory).
        ``credentials``: from :func:`read_credentials` (read here when not given)."""
        self.settings = settings
        self.name = name
        self.unreachable_hint = unreachable_hint
        self._closing = False
        self.v5 = settings.protocol == "5"
        self.persistent_session_s = persistent_session_s
        self.max_inbound_bytes = max_inbound_bytes
        self._on_connect_hook = on_connect
        self._subscriptions: dict[str, tuple[int, Handler]] = {}
        self._pending: dict[int, Delivery] = {}
        self._early: dict[int, str | None] = {}
        self._acked = threading.Condition()
        self.connected = threading.Event()
        self.generation = 0  # connections made so far
        self.last_error = ""
        self.manual_ack = manual_ack
        self.not_acked = 0  # messages left unacknowledged because a handler failed
        self._redeliver: threading.Timer | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else persistent_session_s is None,
            manual_ack=manual_ack,
        )
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.max_queued_messages_set(0)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        if credentials is None:
            credentials = read_credentials(settings)
        if settings.username is not None:
            self._client.username_pw_set(settings.username, credentials.password)
        if credentials.tls is not None:
            self._client.tls_set_context(credentials.tls)
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        properties = None
        clean_start: bool | int = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self.v5:
            clean_start = self.persistent_session_s is None
            properties = Properties(PacketTypes.CONNECT)
            if self.persistent_session_s is not None:
                properties.SessionExpiryInterval = self.persistent_session_s
            if self.max_inbound_bytes is not None:
                properties.MaximumPacketSize = self.max_inbound_bytes
        kwargs: dict[str, object] = {"properties": properties} if self.v5 else {}
        if self.v5:
            kwargs["clean_start"] = clean_start
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=30,
                                   **kwargs)  # type: ignore[arg-type]
        self._client.loop_start()

    @property
    def alive(self) -> bool:
        """paho's network thread is running (from :meth:`start` until :meth:`close`)."""
        thread = getattr(self._client, "_thread", None)
        return thread is not None and thread.is_alive()

    def close(self) -> None:
        """Disconnect cleanly (no will) and stop the network thread; idempotent."""
        self._closing = True  # the disconnect that follows is ours, not a failure
        if self._redeliver is not None:
            self._redeliver.cancel()
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self.connected.clear()

    # --- subscribe and publish ----------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        self._subscriptions[topic] = (qos, handler)
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is not None and self.connected.is_set():
            self._client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                correlation_data: bytes | None = None) -> Delivery:
        properties = None
        if correlation_data is not None and self.v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain,
                                    properties=properties)
        if qos == 0:
            return Delivery(self, None)
        # Register every QoS 1 mid, even one paho only queued (not connected): its late
        # PUBACK must land here, never on a later message that reuses the mid.
        delivery = Delivery(self, info.mid)
        with self._acked:
            if info.mid in self._early:  # acknowledged before we got here
                delivery.error = self._early.pop(info.mid)
                delivery.done = True
            else:
                self._pending[info.mid] = delivery
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return Delivery(self, None, paho.error_string(info.rc))
        return delivery

    def reply(self, request: Message, default_topic: str, payload: bytes) -> None:
        """Answer ``request`` on its MQTT 5 ResponseTopic, else on ``default_topic``."""
        topic = request.response_topic or default_topic
        self.publish(topic, payload, qos=1, correlation_data=request.correlation_data)

    # --- paho callbacks (network thread) -------------------------------------------------
    def _handle_connect(self, client: paho.Client, userdata: object, flags: object,
                        reason_code: ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            hint = ""
            if "authori" in str(reason_code).lower() or "password" in str(reason_code).lower():
                hint = "; check mqtt.username and mqtt.password_file"
            self._note_error(f"broker {self.settings.host}:{self.settings.port} refused the "
                             f"connection: {reason_code}{hint}")
            return
        self.generation += 1
        self.connected.set()
        self.last_error = ""
        log.info("%s: connected to %s:%d", self.name, self.settings.host, self.settings.port)
        for topic, (qos, _handler) in self._subscriptions.items():
            client.subscribe(topic, qos)
        if self._on_connect_hook is not None:
            try:
                self._on_connect_hook()
            except Exception:
                log.exception("%s: on_connect hook failed", self.name)

    def _handle_connect_fail(self, client: paho.Client, userdata: object) -> None:
        tls = " and mqtt.tls" if self.settings.tls else ""
        hint = self.unreachable_hint or (f"is the broker running? check mqtt.host, "
                                         f"mqtt.port{tls}; sessions stay on disk")
        self._note_error(f"cannot connect to {self.settings.host}:{self.settings.port} "
                         f"({hint}), retrying every {RECONNECT_MAX_S} s at most")

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: object,
                           reason_code: ReasonCode, properties: object) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._closing:
            log.info("%s: disconnected from %s:%d", self.name, self.settings.host,
                     self.settings.port)
        elif was:
            self._note_error(f"disconnected from {self.settings.host}:{self.settings.port} "
                             f"({reason_code}); reconnecting")

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s: %s", self.name, text)
        self.last_error = text

    def _handle_message(self, client: paho.Client, userdata: object,
                        msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        message = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            response_topic=getattr(props, "ResponseTopic", None) if props else None,
            correlation_data=getattr(props, "CorrelationData", None) if props else None,
        )
        taken = True
        for pattern, (_qos, handler) in list(self._subscriptions.items()):
            if paho.topic_matches_sub(topic_filter(pattern), msg.topic):
                try:
                    handler(message)
                except NotTaken as exc:
                    taken = False
                    log.error("%s: %s could not be taken (%s); not acknowledged, the broker "
                              "will deliver it again", self.name, msg.topic, exc)
                except Exception as exc:  # nothing a client sends may kill the network thread
                    taken = False
                    log.error("%s: handler for %s failed (%s: %s)%s", self.name, msg.topic,
                              type(exc).__name__, exc,
                              "; not acknowledged, the broker will deliver it again"
                              if self.manual_ack else "", exc_info=log.isEnabledFor(logging.DEBUG))
        if not self.manual_ack or msg.qos == 0:
            return
        if taken:
            client.ack(msg.mid, msg.qos)
        else:
            self.not_acked += 1
            self._schedule_redelivery()

    def _schedule_redelivery(self) -> None:
        """Drop the connection soon, so the broker delivers what was not acknowledged again
        (once per failure burst: further failures meanwhile ride on the same reconnect)."""
        with self._acked:
            if self._redeliver is not None and self._redeliver.is_alive():
                return
            self._redeliver = threading.Timer(REDELIVER_AFTER_S, self._drop_connection)
            self._redeliver.daemon = True
            self._redeliver.start()

    def _drop_connection(self) -> None:
        sock = self._client.socket()
        if sock is None:
            return  # already disconnected: the reconnect brings the messages back anyway
        log.info("%s: reconnecting so the broker delivers the unacknowledged messages again",
                 self.name)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]  # a real socket
        except OSError:
            pass

    def _handle_publish(self, client: paho.Client, userdata: object, mid: int,
                        reason_code: ReasonCode, properties: object) -> None:
        error = str(reason_code) if reason_code.is_failure else None
        with self._acked:
            delivery = self._pending.pop(mid, None)
            if delivery is None:
                self._early[mid] = error
            else:
                delivery.error = error
                delivery.done = True
            self._acked.notify_all()
