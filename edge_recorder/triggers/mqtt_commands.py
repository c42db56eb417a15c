"""Commands over MQTT: ``P/cmd`` in, one reply out per command.

The reply goes to the command's MQTT 5 ResponseTopic (with its CorrelationData) when that
lies in the device's own reply namespace — ``P/cmd/reply`` or below it
(``P/cmd/reply/<anything>``) — else to ``P/cmd/reply``: a command cannot make the device
publish on another device's topics, on its own status or session topics, or anywhere else.
The request's ``request_id`` is echoed in the reply.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from edge_recorder.delivery.mqtt import Message, MqttLink
from edge_recorder.log import describe
from edge_recorder.recording.events import Event, Rejected, Reply, error
from edge_recorder.triggers.commands import command_event, decode_command, request_id_of

log = logging.getLogger(__name__)


class MqttCommands:
    def __init__(self, link: MqttLink, topic_root: str,
                 submit: Callable[[Event], None]) -> None:
        self.link = link
        self.cmd_topic = f"{topic_root}/cmd"
        self.reply_topic = f"{topic_root}/cmd/reply"
        self.submit = submit
        self.received = 0
        self.rejected = 0

    def start(self) -> None:
        self.link.subscribe(self.cmd_topic, self.on_message, qos=1)

    def close(self) -> None:
        self.link.unsubscribe(self.cmd_topic)

    def allowed_response_topic(self, topic: str) -> bool:
        """Only the device's own reply namespace: ``P/cmd/reply`` and below."""
        return (topic == self.reply_topic or topic.startswith(f"{self.reply_topic}/")) and \
            not set(topic) & set("+#\0")

    def on_message(self, message: Message) -> None:
        self.received += 1
        if message.response_topic is not None and \
                not self.allowed_response_topic(message.response_topic):
            log.info("command asked for replies on %r, outside %s/#; replying on %s",
                     message.response_topic[:200], self.reply_topic, self.reply_topic)
            message = dataclasses.replace(message, response_topic=None)
        request_id: Any = None

        def reply(body: Reply) -> None:
            if request_id is not None:
                body = body.replace(request_id=request_id)
            self.link.reply(message, self.reply_topic, body.to_json())

        try:
            doc = decode_command(message.payload)  # the size is checked before parsing
            request_id = request_id_of(doc)
            event: Event = command_event(doc, source=self.cmd_topic, reply=reply)
        except Rejected as exc:
            self.rejected += 1
            log.info("command rejected (%s): %s", exc.code, exc.message)
            reply(error(exc.code, exc.message))
            return
        except Exception as exc:  # a bug: still exactly one reply, and the daemon goes on
            self.rejected += 1
            log.exception("command could not be parsed")
            reply(error("internal_error", f"the command could not be handled: {describe(exc)}"))
            return
        self.submit(event)
