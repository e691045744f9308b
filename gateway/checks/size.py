"""Message size against the configured limit."""

from __future__ import annotations

from gateway.checks import Check, CheckContext
from gateway.message import Message
from gateway.symbols import Symbol


class SizeCheck(Check):
    name = "size"
    symbols = {"SIZE_EXCEEDED": "message is larger than size.max_bytes"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        limit = self.config.size.max_bytes
        if message.size > limit:
            return [self.symbol("SIZE_EXCEEDED", f"{message.size} bytes > {limit}")]
        return []
