"""Keeps the server's processes running: a worker that dies, or hangs (its loop has not turned for
--worker_hang_timeout_s, so it is killed), is restarted (--on_worker_failure restart) or stops the server (exit);
SIGTERM drains the server before it stops.

While a worker is down the HTTP workers fail the requests in flight with 503 and /readiness answers 503; the
restarted process binds a new inbox address that its peers follow (topology), so nothing else restarts. A worker
restarted --max_restarts times within RESTART_WINDOW_S is crash-looping: the server exits with code 1.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from multiprocessing.connection import wait

from light_tts.server.ipc.process_table import ProcessTable

log = logging.getLogger("light_tts.launcher")
RESTART_WINDOW_S = 60.0
CUT_GRACE_S = 2.0  # after the drain timed out: time for the HTTP workers to fail what is left and free its slots


def receive_status(pipe) -> tuple[str, object]:
    """("ready", pid) or ("error", traceback) from a child's readiness pipe; a closed pipe means it died."""
    try:
        return pipe.recv()
    except EOFError:
        return "error", "exited during startup without a report"


class Supervisor:
    def __init__(self, procs):
        self.procs, self.cfg = procs, procs.cfg
        self.table: ProcessTable = procs.shared.processes
        self.slots = procs.shared.slots
        self.restarts: dict[tuple[str, int], deque[float]] = defaultdict(deque)
        self.starting: dict[tuple[str, int], object] = {}  # restarted processes not ready yet -> their pipe

    def run(self) -> int:
        """Until a stop (0), a drain on SIGTERM (0), or a failure the policy does not survive (1)."""
        while not self.procs.stop_requested:
            if self.procs.drain_requested:
                return self.drain()
            code = self.check()
            if code is not None:
                return code
            wait([p.sentinel for p in self.procs.procs.values()] + list(self.starting.values()), timeout=0.2)
        return 0

    def check(self) -> int | None:
        """One look at every process; an exit code when the server must stop."""
        self.poll_starting()
        for stage, rank in self.table.hung_backends(self.cfg.worker_hang_timeout_s):
            proc = self.procs.procs[(stage, rank)]
            log.error(
                "%s%d (pid %d) has not turned its loop for %g s: killing it as hung",
                stage,
                rank,
                proc.pid,
                self.cfg.worker_hang_timeout_s,
            )
            proc.kill()
            proc.join(5)
        failed = [key for key, proc in self.procs.procs.items() if not proc.is_alive()]
        if not failed:
            return None
        if self.cfg.on_worker_failure == "exit":
            self.procs.mark_dead(failed, "shutting the server down (--on_worker_failure exit)")
            grace_end = time.monotonic() + self.cfg.shutdown_grace_s
            while time.monotonic() < grace_end and not self.procs.stop_requested:
                time.sleep(0.1)
            return 1
        self.procs.mark_dead(failed, "restarting it")
        for key in failed:
            if self.is_crash_looping(key):
                log.error(
                    "%s%d failed %d times within %g s: giving up, the server exits",
                    *key,
                    len(self.restarts[key]),
                    RESTART_WINDOW_S,
                )
                return 1
            self.starting.pop(key, None)
            self.starting[key] = self.procs.restart(key)
        return None

    def is_crash_looping(self, key: tuple[str, int]) -> bool:
        now, history = time.monotonic(), self.restarts[key]
        while history and now - history[0] > RESTART_WINDOW_S:
            history.popleft()
        if len(history) >= self.cfg.max_restarts:
            return True
        history.append(now)
        return False

    def poll_starting(self) -> None:
        for key, pipe in list(self.starting.items()):
            if pipe.poll():
                del self.starting[key]
                status, detail = receive_status(pipe)
                if status == "ready":
                    log.warning("%s%d restarted (pid %d)", *key, detail)
                else:
                    log.error("%s%d failed to restart:\n%s", *key, detail)

    def drain(self) -> int:
        """SIGTERM: /readiness and new requests get 503 at once; requests in flight get --drain_timeout_s to
        finish, then the HTTP workers end them with a 503 error."""
        self.table.set_draining()
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        log.warning(
            "SIGTERM: draining %d request(s) for up to %g s (new requests get 503)",
            self.slots.num_in_use(),
            self.cfg.drain_timeout_s,
        )
        while self.slots.num_in_use() and time.monotonic() < deadline and not self.procs.stop_requested:
            time.sleep(0.05)
        if self.slots.num_in_use():
            log.warning("drain timed out: ending %d request(s) with an error", self.slots.num_in_use())
            self.table.set_draining(is_cut=True)
            cut_end = time.monotonic() + CUT_GRACE_S
            while self.slots.num_in_use() and time.monotonic() < cut_end:
                time.sleep(0.05)
        return 0
