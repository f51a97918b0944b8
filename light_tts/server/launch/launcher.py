"""Starts, supervises and stops every server process, and owns the shared memory and sockets they use.

Start: shared memory and endpoint names are made first, then the HTTP workers (so /readiness answers while models
load) and the encode, LLM and decode processes, all spawned; each reports readiness (or its traceback) through
a pipe. Run: supervisor.py restarts a worker that dies or hangs (or stops the server, --on_worker_failure exit).
Stop: SIGTERM drains first (new requests 503, in-flight ones get --drain_timeout_s), SIGINT stops at once; then
the HTTP workers get SIGTERM, then the backends, SIGKILL for any that lingers, and shared memory, ipc socket
files, the lock file and the metrics directory are removed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import time
from multiprocessing.connection import wait
from pathlib import Path

from light_tts.errors import ModelDirError
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.ipc.shm import RequestSlots
from light_tts.server.ipc.voice_cache import VoiceCache
from light_tts.server.launch.supervisor import Supervisor, receive_status
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.defaults import sized_to_host
from light_tts.server.runtime.model_set import parse_model_specs
from light_tts.server.runtime.settings import ServerSettings, load_settings
from light_tts.server.runtime.topology import PortArgs

log = logging.getLogger("light_tts.launcher")
STARTUP_TIMEOUT_S = 1800.0  # model loading, warm-up and CUDA-graph capture on a cold GPU host
STOP_TIMEOUT_S = 5.0


def resolve_model_dir(cfg: ServerConfig) -> ServerConfig:
    """With no --model_dir, write (once) and serve a tiny random-weight model: fine for trying the API, noise out."""
    from light_tts.families import family_of
    from light_tts.model_dir import check_complete

    if cfg.model_dir is not None:
        for _, path in parse_model_specs(cfg.model_dir):
            family_of(path).check_complete(path)
        return cfg
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lighttts" / "tiny-model"
    try:
        check_complete(cache)
    except Exception:
        from light_tts.tools.make_model import make_model

        log.warning("writing a tiny random-weight model to %s", cache)
        make_model(cache, size="tiny")
    log.warning("=" * 78)
    log.warning("NO --model_dir GIVEN: SERVING A TINY RANDOM-WEIGHT MODEL FROM %s", cache)
    log.warning("ITS AUDIO IS NOISE. Pass --model_dir /path/to/CosyVoice2-0.5B for real speech.")
    log.warning("=" * 78)
    return cfg.replace(model_dir=(str(cache),))


def check_placement(settings: ServerSettings) -> None:
    """Raises SystemExit when the planned processes do not fit their GPUs (placement.check_shares, check_fits)."""
    from light_tts.server.runtime.placement import check_fits, check_shares

    topology = settings.topology
    check_shares(topology)
    gpus = sorted({p.device for p in topology.processes if p.device.startswith("cuda")})
    if not gpus or topology.is_simulated:  # simulated GPUs have no memory of their own to check
        return
    gpu_bytes = gpu_memory_bytes(gpus)
    if gpu_bytes:
        check_fits(topology, placement_weight_bytes(settings), gpu_bytes)
    else:
        log.warning("could not read the GPUs' memory sizes (nvidia-smi); not checking that the models fit")


def gpu_memory_bytes(devices: list[str]) -> dict[str, int]:
    """Total memory of each cuda:N, from nvidia-smi (torch would hold a CUDA context in the launcher for it);
    empty when it cannot be read."""
    import subprocess

    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        mib = {index.strip(): int(total) for index, total in (line.split(",") for line in out.strip().splitlines())}
        result = {}
        for device in devices:
            n = int(device.partition(":")[2] or 0)
            physical = visible[n].strip() if n < len(visible) else str(n)
            result[device] = mib[physical] << 20
        return result
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return {}


def placement_weight_bytes(settings: ServerSettings) -> dict[tuple[str, int], int]:
    """Weights each LLM and decode process loads, from the sizes of its family's checkpoint files."""
    from light_tts.families import family_named

    files = {}
    for m in settings.models:
        family, model_dir = family_named(m.family), Path(m.model_dir)
        files[m.name] = {
            "llm": family.llm_weight_files(model_dir),
            "decode": [model_dir / name for name in family.flow_files],
        }
    return {
        (p.stage, p.rank): sum(f.stat().st_size for f in files[p.models[0]][p.stage])
        for p in settings.topology.processes
        if p.stage in ("llm", "decode")
    }


def check_port_free(host: str, port: int) -> None:
    """HTTP workers share the port through SO_REUSEPORT, which would also let a second server silently share it
    with a running one; a plain bind first fails loudly instead."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(info[0], socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(info[4])
        except OSError as e:
            raise SystemExit(f"cannot serve on {host}:{port}: {e.strerror}") from None


class SharedState:
    """The shared-memory segments, created here once and unlinked at exit."""

    def __init__(self, settings: ServerSettings, ports: PortArgs):
        self.ports = ports
        Path(ports.metrics_dir).mkdir(parents=True, exist_ok=True)
        self.slots = RequestSlots(settings.shm, ports.shm_prefix, ports.lock_path, create=True)
        self.processes = ProcessTable(
            settings.cfg, ports.shm_prefix, ports.lock_path, create=True, topology=settings.topology
        )
        self.voices = VoiceCache(settings.shm, ports.shm_prefix, ports.lock_path, create=True)

    def cleanup(self) -> None:
        for part in (self.slots, self.processes, self.voices):
            part.shm.unlink()
            part.close()
        for path in (*self.ports.ipc_paths(), Path(self.ports.lock_path)):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.ports.metrics_dir, ignore_errors=True)


class ServerProcesses:
    """Every child process by (stage, rank), with its readiness pipe."""

    def __init__(self, settings: ServerSettings, ports: PortArgs, shared: SharedState):
        self.settings, self.cfg, self.ports, self.shared = settings, settings.cfg, ports, shared
        self.ctx = mp.get_context("spawn")
        self.procs: dict[tuple[str, int], mp.Process] = {}
        self.pipes: dict[tuple[str, int], object] = {}
        self.targets: dict[tuple[str, int], tuple] = {}  # what each process runs, to restart it
        self.stop_requested = False  # SIGINT (or a second SIGTERM): stop now
        self.drain_requested = False  # SIGTERM: drain, then stop

    def start(self, start_http: bool = True) -> None:
        from light_tts.server.api.app import run_http_process
        from light_tts.server.workers.decode_worker import run_decode_process
        from light_tts.server.workers.encode_worker import run_encode_process
        from light_tts.server.workers.llm_worker import run_llm_process

        if start_http:
            for rank in range(self.cfg.httpserver_workers):
                self._start(("http", rank), run_http_process, rank)
        for rank in range(self.cfg.encode_process_num):
            self._start(("encode", rank), run_encode_process, rank)
        for rank in self.settings.topology.ranks("llm"):  # --llm_replicas per model
            self._start(("llm", rank), run_llm_process, rank)
        for rank in self.settings.topology.ranks("decode"):
            self._start(("decode", rank), run_decode_process, rank)

    def _start(self, key: tuple[str, int], target, *rank: int) -> None:
        receiver, sender = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=target, args=(self.settings, self.ports, *rank, sender), name=f"{key[0]}{key[1]}"
        )
        proc.start()
        sender.close()
        self.procs[key], self.pipes[key], self.targets[key] = proc, receiver, (target, *rank)
        self.shared.processes.set(*key, pid=proc.pid, state=ProcessTable.STARTING)
        self.shared.processes.set_load(*key, 0)

    def restart(self, key: tuple[str, int]):
        """Start `key` again (its old process is gone); returns the readiness pipe of the new one."""
        self.procs[key].join(0)
        self._start(key, *self.targets[key])
        return self.pipes[key]

    def wait_ready(self) -> bool:
        """Block until every child reported ready; False if one failed or died first, or a stop was asked."""
        waiting, deadline = dict(self.pipes), time.monotonic() + STARTUP_TIMEOUT_S
        while waiting and not (self.stop_requested or self.drain_requested) and time.monotonic() < deadline:
            sentinels = {self.procs[k].sentinel: k for k in waiting}
            for ready in wait([*waiting.values(), *sentinels], timeout=0.5):
                key = sentinels.get(ready) or next((k for k, p in waiting.items() if p is ready), None)
                if key not in waiting:
                    continue  # its pipe and its sentinel fired together
                status, detail = receive_status(waiting.pop(key))
                if status != "ready":
                    log.error("%s%d failed to start:\n%s", *key, detail)
                    return False
                log.info("%s%d ready (pid %d)", *key, detail)
        return not waiting

    def watch(self) -> int:
        """Supervise (supervisor.py) until a stop (0) or a failure the --on_worker_failure policy ends on (1)."""
        return Supervisor(self).run()

    def mark_dead(self, dead: list[tuple[str, int]], then: str) -> None:
        for key in dead:
            proc = self.procs[key]
            log.error(
                "%s%d (pid %d) DIED with exit code %s; failing its requests and %s", *key, proc.pid, proc.exitcode, then
            )
            self.shared.processes.set(*key, state=ProcessTable.DEAD)
            # a dead HTTP worker's slots stay held until its replacement has every stage confirm their aborts

    def shutdown(self) -> None:
        """HTTP workers first (they may still be answering), then the backends they talk to."""
        for stages in (("http",), ("encode", "llm", "decode")):
            procs = [p for (stage, _), p in self.procs.items() if stage in stages]
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("%s did not stop on SIGTERM; killing it", proc.name)
                    proc.kill()
                    proc.join()


def launch(cfg: ServerConfig) -> int:
    """Run the server until SIGINT/SIGTERM (returns 0) or a worker dies (returns 1)."""
    from light_tts.server.runtime.process import set_process_title

    set_process_title("launcher", f"{cfg.host}:{cfg.port}")
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s launcher %(levelname)s %(message)s")
    check_port_free(cfg.host, cfg.port)
    try:
        cfg = resolve_model_dir(cfg)
    except ModelDirError as e:
        log.error("%s", e)
        return 1
    for note in cfg.ignored_flags():
        log.warning("%s", note)
    cfg, derived = sized_to_host(cfg)
    for line in derived:
        log.info("derived for this host: %s", line)
    try:
        settings = load_settings(cfg)
    except (ValueError, ModelDirError) as e:  # e.g. an --api_key_file that cannot be read or holds no key
        log.error("%s", e)
        return 1
    for note in settings.ignored_flags():
        log.warning("%s", note)
    for line in settings.topology.log_lines():
        log.info("%s", line)
    check_placement(settings)
    for note in settings.auth.startup_notes():  # what is protected, never a key
        log.info("%s", note)
    log.info("saved voices in %s", settings.data_dir)
    ports = PortArgs.create(cfg)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = ports.metrics_dir  # inherited by every spawned child
    # flow caches of many sizes come and go in the decode processes: growable segments keep the freed memory usable
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    shared = SharedState(settings, ports)
    procs = ServerProcesses(settings, ports, shared)

    def request_stop(signum, _frame):
        if signum == signal.SIGTERM and not procs.drain_requested:
            procs.drain_requested = True  # the supervisor drains, then returns
            return
        log.info("received %s; stopping", signal.Signals(signum).name)
        procs.stop_requested = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs.start()
        if not procs.wait_ready():
            return 0 if procs.stop_requested or procs.drain_requested else 1
        log.info(
            "serving %s on http://%s:%d",
            ", ".join(f"{m.name} ({m.model_dir})" for m in settings.models),
            cfg.host,
            cfg.port,
        )
        return procs.watch()
    finally:
        procs.shutdown()
        shared.cleanup()
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("stopped")
