"""The parent's side of the group reload protocol (server.processes._Supervisor), driven
message by message over real socket pairs: late answers, timeouts, failures and requests
that arrive mid-round. (test_hardening runs the whole protocol across real processes.)"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.processes import _Supervisor

A, B = 101, 102  # two children's pids (never waited on here)


class Group:
    def __init__(self, hup: bool = False, ready: bool = True) -> None:
        self.ends: dict[int, socket.socket] = {}
        parents = {}
        for pid in (A, B):
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            child_end.setblocking(False)
            parents[pid], self.ends[pid] = parent_end, child_end
        self.supervisor = _Supervisor(parents, None, hup)
        for pid in (A, B) if ready else ():
            self.say(pid, op="ready", port=1, health_port=None, metrics_port=None)

    def close(self) -> None:
        s = self.supervisor
        for end in (*self.ends.values(), *s.children.values(), s._wake_r, s._wake_w):
            end.close()
        s.selector.close()

    def say(self, pid: int, **message: Any) -> None:
        self.supervisor.handle(pid, message)

    def heard(self, pid: int) -> list[dict[str, Any]]:
        """Everything the supervisor has sent child ``pid`` since last asked."""
        out = []
        while True:
            try:
                out.append(json.loads(self.ends[pid].recv(65536)))
            except BlockingIOError:
                return out

    def heard_all(self) -> dict[int, list[dict[str, Any]]]:
        return {pid: self.heard(pid) for pid in (A, B)}

    def prepared(self, number: int, version: str = "v2") -> None:
        for pid in (A, B):
            self.say(pid, op="prepared", round=number, ok=True, version=version, seconds=0.1)

    def committed(self, number: int) -> None:
        for pid in (A, B):
            self.say(pid, op="committed", round=number, ok=True)


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group()
    yield g
    g.close()


def ops(messages: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    return [(m["op"], m.get("round")) for m in messages]


def test_a_round_prepares_everywhere_then_commits_then_answers(group: Group) -> None:
    group.say(A, op="reload")
    assert group.heard_all() == {A: [{"op": "prepare", "round": 1}],
                                 B: [{"op": "prepare", "round": 1}]}  # fmt: skip
    group.say(A, op="prepared", round=1, ok=True, version="v2", seconds=0.1)
    assert group.heard_all() == {A: [], B: []}  # nothing until every process is ready
    group.say(B, op="prepared", round=1, ok=True, version="v2", seconds=0.2)
    assert {pid: ops(m) for pid, m in group.heard_all().items()} == {
        A: [("commit", 1)], B: [("commit", 1)]}  # fmt: skip
    group.committed(1)
    assert group.heard(A) == [{"op": "result", "ok": True, "version": "v2", "seconds": 0.2}]
    assert group.heard(B) == []  # B did not ask
    assert group.supervisor.round is None


def test_a_request_during_a_round_gets_the_next_round_not_this_one(group: Group) -> None:
    group.say(A, op="reload")
    group.prepared(1, "v2")
    group.say(B, op="reload")  # mid-round: round 1 may have read the directory before B's news
    group.say(A, op="reload")  # and another: both share one follow-up
    group.heard_all()
    group.committed(1)
    assert ops(group.heard(A)) == [("result", None), ("prepare", 2)]
    assert ops(group.heard(B)) == [("prepare", 2)]  # no answer for B from round 1
    group.prepared(2, "v3")
    group.committed(2)
    results = {pid: [m for m in group.heard(pid) if m["op"] == "result"] for pid in (A, B)}
    assert results[A][0]["version"] == results[B][0]["version"] == "v3"
    assert group.supervisor.round is None and group.supervisor.queued is None


def test_one_failed_load_aborts_everywhere(group: Group) -> None:
    group.say(B, op="reload")
    group.heard_all()
    group.say(A, op="prepared", round=1, ok=False, error="sha256 does not match")
    assert ops(group.heard(A)) == [("abort", 1)]
    assert ops(group.heard(B)) == [("abort", 1), ("result", None)]
    group.say(B, op="prepared", round=1, ok=True, version="v2", seconds=0.1)  # too late
    assert group.heard_all() == {A: [], B: []}  # ignored: no commit for a failed round


def test_different_versions_abort(group: Group) -> None:
    group.say(A, op="reload")
    group.heard_all()
    group.say(A, op="prepared", round=1, ok=True, version="v2", seconds=0.1)
    group.say(B, op="prepared", round=1, ok=True, version="v3", seconds=0.1)
    result = group.heard(A)[-1]
    assert result["op"] == "result" and not result["ok"]
    assert "changed during the reload" in result["error"]
    assert ops(group.heard(B)) == [("abort", 1)]


def test_a_timed_out_round_aborts_and_its_late_answers_change_nothing(group: Group) -> None:
    group.say(A, op="reload")
    group.heard_all()
    group.say(A, op="prepared", round=1, ok=True, version="v2", seconds=0.1)
    assert group.supervisor.round is not None
    group.supervisor.round.deadline = time.monotonic() - 1  # B never answers
    group.supervisor.check_deadline()
    heard = group.heard_all()
    assert ops(heard[B]) == [("abort", 1)]
    assert ops(heard[A]) == [("abort", 1), ("result", None)] and not heard[A][1]["ok"]
    # a new round; round 1's late answer must not count toward it
    group.say(B, op="reload")
    group.heard_all()
    group.say(B, op="prepared", round=1, ok=True, version="v2", seconds=9.0)
    group.say(A, op="prepared", round=2, ok=True, version="v3", seconds=0.1)
    assert group.heard_all() == {A: [], B: []}  # still waiting for B's round-2 answer
    group.say(B, op="prepared", round=2, ok=True, version="v3", seconds=0.1)
    assert ops(group.heard(A)) == [("commit", 2)]


def test_a_process_that_cannot_switch_fails_the_round_loudly(group: Group) -> None:
    group.say(A, op="reload")
    group.prepared(1)
    group.heard_all()
    group.say(A, op="committed", round=1, ok=True)
    group.say(B, op="committed", round=1, ok=False)
    result = group.heard(A)[-1]
    assert not result["ok"] and f"server process {B} could not switch" in result["error"]


def test_a_sighup_during_start_up_runs_once_every_process_is_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from server.app import HUP_HONOURED

    g = Group(hup=True, ready=False)
    caplog.set_level("INFO", logger="server.processes")
    try:
        g.say(A, op="ready", port=1, health_port=None, metrics_port=None)
        g.say(A, op="reload")  # a call to A while B still starts: the same pending round
        assert g.heard_all() == {A: [], B: []}  # B is not serving yet
        g.say(B, op="ready", port=1, health_port=None, metrics_port=None)
        assert ops(g.heard(A)) == [("prepare", 1)]
        assert HUP_HONOURED in caplog.text
        g.prepared(1)
        g.committed(1)
        assert [m["ok"] for m in g.heard(A) if m["op"] == "result"] == [True]
    finally:
        g.close()


def test_a_child_drops_a_model_whose_round_was_aborted_while_it_loaded(
    loop_thread: Any, recommender: Any, artifacts_dir: Any
) -> None:
    """The child's side, on a real server: an abort that arrives while the load runs must
    not leave the loaded model held (a whole model's memory) until the next reload."""
    from server.app import build_server
    from server.options import ServerOptions
    from server.processes import _Member

    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    running = loop_thread.run(build_server(recommender, ServerOptions(port=0), artifacts_dir))
    try:

        async def member() -> _Member:
            return _Member(child_end, running)

        child = loop_thread.run(member())
        parent_end.send(json.dumps({"op": "prepare", "round": 1}).encode())
        parent_end.send(json.dumps({"op": "abort", "round": 1}).encode())
        time.sleep(1.0)  # the sample model loads in milliseconds
        deadline = time.monotonic() + 30
        while child._tasks:  # a load still running
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert child._prepared is None
        parent_end.setblocking(False)
        with pytest.raises(BlockingIOError):  # and says nothing of a round that is over
            parent_end.recv(65536)
    finally:

        async def detach() -> None:  # else closing the parent's end reads as its death:
            asyncio.get_running_loop().remove_reader(child_end.fileno())  # SIGTERM to us

        loop_thread.run(detach())
        loop_thread.run(running.stop(None))
        parent_end.close()
        child_end.close()
