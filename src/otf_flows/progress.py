"""Progress events from jobs to whoever listens (the CLI's progress bar).

Library code only emits; nothing is printed. Under FireWorks nobody listens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_listeners: list[Callable[[str, dict[str, Any]], None]] = []


def subscribe(listener: Callable[[str, dict[str, Any]], None]) -> None:
    """Call ``listener(event, data)`` for every event."""
    _listeners.append(listener)


def unsubscribe(listener: Callable[[str, dict[str, Any]], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def emit(event: str, **data: Any) -> None:
    """Send an event (``md_step``, ``check``, ``refit``, ``reference``, ...) to the listeners."""
    for listener in list(_listeners):
        listener(event, data)
