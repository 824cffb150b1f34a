"""twistd dropin: ``twistd wsgate``. Loaded on every twistd start, so it imports nothing heavy."""

from twisted.application.service import ServiceMaker

wsgate = ServiceMaker(
    "wsgate",
    "wsgate.tap",
    "WebSocket gateway: terminates WebSocket on both legs and relays frame by frame",
    "wsgate",
)
