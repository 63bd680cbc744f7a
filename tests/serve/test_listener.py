"""The model deployment's bridge from the engine thread to asyncio: plain requests wake the loop once."""

from __future__ import annotations

import asyncio
import threading

from serve.model import _AsyncListener, _End


def _feed(listener: _AsyncListener) -> None:
    """What the engine's scheduler thread does for a request of three tokens."""
    for token in (5, 6, 7):
        listener.on_token(token)
    listener.on_finish("result", None)


def _events(tokens: bool) -> tuple[list, int]:
    async def run():
        loop = asyncio.get_running_loop()
        listener = _AsyncListener(loop, tokens=tokens)
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal wakeups
            wakeups += 1
            return original(*args)

        loop.call_soon_threadsafe = counting
        thread = threading.Thread(target=_feed, args=(listener,))
        thread.start()
        events = []
        while not events or not isinstance(events[-1], _End):
            events.append(await listener.queue.get())
        thread.join()
        return events, wakeups

    return asyncio.run(run())


def test_a_plain_request_hears_only_its_end_and_a_stream_every_token():
    events, wakeups = _events(tokens=False)
    assert len(events) == 1 and events[0].result == "result" and wakeups == 1
    events, wakeups = _events(tokens=True)
    assert events[:3] == [5, 6, 7] and isinstance(events[3], _End) and wakeups == 4
