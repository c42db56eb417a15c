"""Commands over MQTT: ``P/cmd`` in, one reply out per command.

The reply goes to the command's MQTT 5 ResponseTopic (with its CorrelationData) when it
has one, else to ``P/cmd/reply``; the request's ``request_id`` is echoed in it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from edge_recorder.delivery.mqtt import Message, MqttLink
from edge_recorder.recording.events import Event, Rejected, Reply, error
from edge_recorder.triggers.commands import parse_command, request_id_of

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

    def on_message(self, message: Message) -> None:
        self.received += 1
        request_id = request_id_of(message.payload)

        def reply(body: Reply) -> None:
            if request_id is not None:
                body = {"request_id": request_id, **body}
            self.link.reply(message, self.reply_topic, json.dumps(body).encode())

        try:
            event: Event = parse_command(message.payload, source=self.cmd_topic, reply=reply)
        except Rejected as exc:
            self.rejected += 1
            log.info("command rejected (%s): %s", exc.code, exc.message)
            reply(error(exc.code, exc.message))
            return
        self.submit(event)
