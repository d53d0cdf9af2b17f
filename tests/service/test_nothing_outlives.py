"""Nothing of a job outlives it, and the runner holds a bounded amount of what its sandbox sends (issue 18): a
process the conversion starts in a session of its own dies with the job, and a flood of large events leaves
the worker with a bounded list."""

from __future__ import annotations

import time

import psutil

from service.jobs import runner as runner_module
from service.jobs.runner import EventBudget, JobRunner
from tests.service.test_runner import make_job


def _escapees() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if "sepconv-test-escapee" in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


def test_a_process_in_its_own_session_dies_with_the_job(make_settings):
    s = make_settings(test_hook="escape")
    make_job(s, b"not a model")
    outcome = JobRunner(s, "w").run_next()
    assert outcome.status == "failed"  # the model is garbage; what matters is what is left running
    deadline = time.monotonic() + 5
    while _escapees() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _escapees()
    for p in left:
        p.kill()
    assert not left, "a process started by the conversion outlived its job"
    sandbox = next(e for e in outcome.events if e["event"] == "sandbox")
    assert "pid_namespace" in sandbox


def test_a_flood_of_events_is_bounded(make_settings):
    s = make_settings(test_hook="flood", job_timeout_s=20)
    make_job(s, b"not a model")
    started = time.monotonic()
    outcome = JobRunner(s, "w").run_next()
    assert outcome.status == "failed" and time.monotonic() - started < 25
    assert len(outcome.events) <= runner_module._MAX_EVENTS + 2
    assert sum(len(str(e)) for e in outcome.events) < 2 * runner_module._MAX_EVENT_BYTES + 100_000


def test_event_budget_rules():
    budget = EventBudget()
    big = b'{"event": "error", "message": "' + b"x" * (runner_module._MAX_EVENT_BYTES + 10) + b'"}\n'
    assert budget.feed(big, 0.0) == [] and budget.dropped == 1
    for i in range(5):
        budget.feed(b'{"event": "error", "message": "%d"}\n' % i, 0.0)
    assert [e["message"] for e in budget.events] == ["4"]  # one error kept: the last
    lines = b"".join(b'{"event": "progress", "stage": "plan", "progress": 0.1}\n' for _ in range(500))
    budget.feed(lines, 1.0)
    assert sum(e["event"] == "progress" for e in budget.events) == runner_module._MAX_EVENTS_PER_S
    budget.feed(b'{"event": "done"}\n{"event": "done"}\n', 1.0)
    assert sum(e["event"] == "done" for e in budget.events) == 1
    budget.total = runner_module._MAX_EVENT_TOTAL_BYTES
    assert budget.exhausted
