"""The queue's parts on their own: places, the load signal, and the cancel a blocking wait sees."""

from __future__ import annotations

import threading

import anyio
import pytest

from mcp_server.admission import Admission, Signal, Turns
from tools import cancel
from tools.errors import Busy, Cancelled


def test_places_are_bounded_and_given_back():
    admission = Admission(2)
    with admission.place(), admission.place():
        assert admission.pending == 2
        with pytest.raises(Busy, match="busy with 2 requests"):
            with admission.place():
                pass
    assert admission.pending == 0


@pytest.mark.anyio
async def test_a_signal_set_from_another_thread_wakes_every_waiter_without_a_thread():
    signal = Signal()
    woke: list[int] = []

    async def waiter(n: int) -> None:
        await signal.wait()
        woke.append(n)

    async with anyio.create_task_group() as group:
        for n in range(50):  # more than the worker threads
            group.start_soon(waiter, n)
        await anyio.sleep(0)
        threading.Thread(target=signal.set).start()
    assert sorted(woke) == list(range(50))
    await signal.wait()  # once set, at once


@pytest.mark.anyio
async def test_a_cancelled_wait_leaves_no_waiter_behind():
    signal = Signal()
    with anyio.move_on_after(0.05):
        await signal.wait()
    assert signal._waiters == []  # noqa: SLF001
    signal.set()


@pytest.mark.parametrize(
    ("cancelled", "done", "expected"),
    [(False, True, True), (False, False, False), (True, False, Cancelled), (True, True, Cancelled)],
)
def test_a_blocking_wait_gives_up_when_its_request_is_cancelled(cancelled, done, expected):
    event, finished = threading.Event(), threading.Event()
    if cancelled:
        event.set()
    if done:
        finished.set()
    with cancel.cancellable(event):
        if expected is Cancelled:
            with pytest.raises(Cancelled):
                cancel.wait(finished, 5)
        else:
            assert cancel.wait(finished, 0.1) is expected


def test_a_wait_outside_any_request_is_a_plain_wait():
    finished = threading.Event()
    threading.Timer(0.05, finished.set).start()
    assert cancel.wait(finished, 5)


@pytest.mark.anyio
@pytest.mark.parametrize("count", [1, 3])
async def test_turns_go_in_order_and_never_to_more_than_their_count(count):
    turns = Turns(count)
    holding, most, order = 0, 0, []

    async def caller(n: int) -> None:
        nonlocal holding, most
        await turns.acquire()
        holding += 1
        most = max(most, holding)
        order.append(n)
        await anyio.sleep(0)
        holding -= 1
        turns.release()

    async with anyio.create_task_group() as group:
        for n in range(60):  # more than the worker threads; none is used
            group.start_soon(caller, n)
    assert most == count and sorted(order) == list(range(60))
    if count == 1:
        assert order == list(range(60))
    assert turns.waiting == 0 and turns._held == 0  # noqa: SLF001


@pytest.mark.anyio
async def test_a_call_cancelled_while_it_waits_for_its_turn_leaves_the_queue():
    turns = Turns(1)
    await turns.acquire()
    with anyio.move_on_after(0.05):
        await turns.acquire()
    assert turns.waiting == 0
    turns.release()
    await turns.acquire()  # free again: the cancelled waiter took nothing
    turns.release()


@pytest.mark.anyio
async def test_a_cancelled_call_gives_its_place_back_at_once_and_its_turn_when_its_thread_lets_go():
    """Its thread may not stop at once (a generation between tokens): the next caller may queue meanwhile."""
    admission, turns = Admission(1), Turns(1)
    started, release = threading.Event(), threading.Event()

    def stuck(cancel_event: threading.Event) -> None:
        started.set()
        release.wait(10)  # ignores the cancel, as work between two checks does

    call = anyio.CancelScope()

    async def caller() -> None:
        with call:
            await admission.run(stuck, turns)

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        assert await anyio.to_thread.run_sync(started.wait, 10)
        call.cancel()
        with anyio.fail_after(5):
            while admission.pending:
                await anyio.sleep(0.01)
        assert turns._held == 1  # noqa: SLF001  still running on the model
        release.set()
    assert admission.pending == 0 and turns._held == 0  # noqa: SLF001
