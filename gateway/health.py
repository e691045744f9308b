"""Is the milter able to do its job? What ``/health`` answers.

Each problem is one line saying what and how bad; no problems means healthy.
Checked: worker processes alive (or starting), clamd answering a PING when
the ClamAV check is enabled, the quarantine store answering a query when
one is configured.
"""

from __future__ import annotations

from gateway.checks.clamav import clamd_command
from gateway.config import ClamavSection
from gateway.service import Service
from gateway.workers import WorkerPool


def health_problems(service: Service) -> list[str]:
    generation = service.current
    config = generation.config
    problems: list[str] = []
    pool = generation.evaluator
    if isinstance(pool, WorkerPool) and not pool.worker_pids() and not pool.starting():
        problems.append("workers: no worker process is running or starting")
    if "clamav" in config.pipeline.checks:
        problem = _clamd_problem(config.clamav)
        if problem:
            problems.append(problem)
    if generation.keeper is not None:
        try:
            generation.keeper.store().count()
        except Exception as exc:
            problems.append(f"quarantine: {exc}")
    return problems


def _clamd_problem(settings: ClamavSection) -> str | None:
    where = settings.address or settings.socket
    try:
        answer = clamd_command(settings, b"PING", timeout=2.0)
    except OSError as exc:
        return f"clamd at {where}: {exc.strerror or exc}"
    if answer != "PONG":
        return f"clamd at {where}: answered {answer[:30]!r} to PING"
    return None
