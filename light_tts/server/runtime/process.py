"""Process setup every server process shares: its title (what `ps` shows), logging and signals, the device it
computes on, and the check that its launcher is still alive."""

from __future__ import annotations

import logging
import os
import signal

from light_tts.server.runtime.settings import ServerSettings


def set_process_title(name: str, detail: str | None = None) -> None:
    """What `ps` and /proc/<pid>/cmdline show, e.g. "lighttts: llm0 (model tiny, cuda:0)"; the log lines of the
    process carry the same name."""
    from setproctitle import setproctitle

    setproctitle(f"lighttts: {name}" + (f" ({detail})" if detail else ""))


def setup_process(settings: ServerSettings, name: str, detail: str | None = None) -> logging.Logger:
    """Title, logging and signals of a worker process. SIGINT is the launcher's to handle (a terminal's Ctrl-C
    reaches the whole process group); the launcher stops workers with SIGTERM."""
    set_process_title(name, detail)
    logging.basicConfig(level=settings.cfg.log_level.upper(), format=f"%(asctime)s {name} %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    return logging.getLogger(f"light_tts.{name}")


def model_on(settings: ServerSettings, stage: str, rank: int, device: str | None = None) -> str:
    """The detail of a process title: the models it serves and its device, e.g. "model tiny, cuda:0"."""
    plan = settings.topology.plan_of(stage, rank)
    if device and device != plan.device:  # a simulated GPU (--simulate_gpus)
        device = f"{plan.device} simulated on the {device.upper()}"
    models = plan.models
    return f"model{'s' if len(models) > 1 else ''} {', '.join(models)}" + (f", {device}" if device else "")


def resolve_device(settings: ServerSettings, stage: str = "encode", rank: int = 0) -> str:
    """Sets the torch thread count and returns the device this process computes on: the topology's (placement.py,
    where --device applies; the CPU for a simulated GPU)."""
    import torch

    torch.set_num_threads(settings.cfg.cpu_threads)
    return settings.topology.compute_device(stage, rank)


def parent_is_gone(launcher_pid: int) -> bool:
    """A worker whose launcher died (even by SIGKILL) is re-parented; it must exit rather than linger."""
    return os.getppid() != launcher_pid
