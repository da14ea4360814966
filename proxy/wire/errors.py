"""Errors raised by the sans-IO protocol layer."""


class ProtocolViolation(Exception):
    """The peer broke the wire protocol; the connection cannot continue (SQLSTATE 08P01)."""

    sqlstate = "08P01"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.events: list[tuple[int, bytes | None]] = []  # set by MessageScanner
