"""What an HTTP worker watches besides its requests: aborts that stages have yet to confirm, and backend
processes that failed (died, were killed as hung, or were replaced by a restart) since it last looked."""

from __future__ import annotations

from light_tts.server.ipc.process_table import ProcessTable


class PendingAborts:
    """Aborted requests whose slot waits for every stage that may still touch it to confirm (AbortDone).

    A stage that fails is forgotten everywhere: its replacement never saw the request, so nobody is left to
    write into the slot, which is then freed.
    """

    def __init__(self):
        self.pending: dict[int, tuple[int, set[str], float]] = {}  # req_id -> (slot, stages to confirm, since)

    def add(self, req_id: int, slot: int, stages: set[str], now: float) -> bool:
        """False when no stage has to confirm (the caller frees the slot at once)."""
        if not stages:
            return False
        self.pending[req_id] = (slot, set(stages), now)
        return True

    def confirm(self, req_id: int, stage: str) -> int | None:
        """The slot to free once `stage` was the last to confirm, else None."""
        entry = self.pending.get(req_id)
        if entry is None:
            return None
        entry[1].discard(stage)
        if entry[1]:
            return None
        del self.pending[req_id]
        return entry[0]

    def forget_stage(self, stage: str) -> list[tuple[int, int]]:
        """(req_id, slot) of the requests that waited only for `stage`, now free."""
        return [(req_id, slot) for req_id in list(self.pending) if (slot := self.confirm(req_id, stage)) is not None]

    def expired(self, now: float, timeout_s: float) -> list[tuple[int, int, set[str]]]:
        """(req_id, slot, stages that never answered) of aborts older than timeout_s, removed."""
        old = [
            (req_id, slot, stages) for req_id, (slot, stages, since) in self.pending.items() if now - since > timeout_s
        ]
        for req_id, _, _ in old:
            del self.pending[req_id]
        return old

    def __len__(self) -> int:
        return len(self.pending)


class BackendWatch:
    """Backend processes that failed since the last call: marked dead, or running under a new pid (a restart
    can replace a process faster than one look, so a state check alone could miss it)."""

    def __init__(self, processes: ProcessTable):
        self.processes = processes
        self.known: dict[tuple[str, int], int] = {}  # pid of each backend last seen ready

    def failed(self) -> list[tuple[str, int]]:
        """(stage, rank) of each backend that failed since the last call."""
        names = []
        for (stage, rank), state in self.processes.backend_states().items():
            key, pid = (stage, rank), self.processes.pid(stage, rank)
            if key in self.known and (state == ProcessTable.DEAD or pid != self.known[key]):
                names.append(key)
                del self.known[key]
            if state == ProcessTable.READY and key not in self.known:
                self.known[key] = pid
        return names
