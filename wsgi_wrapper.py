"""Serve LightTTS with gunicorn and uvicorn workers (gunicorn owns the port and the HTTP worker processes).

    LIGHTTTS_ARGS="--model_dir /path/to/CosyVoice2-0.5B --decode_process_num 2" \
        gunicorn -c wsgi_wrapper.py -w 4 -b 0.0.0.0:8080 wsgi_wrapper:app

LIGHTTTS_ARGS takes the flags of `python -m light_tts.server.api_server` (host, port and httpserver_workers come
from gunicorn's -b and -w instead). This file is both gunicorn's config (the hooks below run in the gunicorn
master: start the encode, LLM and decode processes, supervise them, stop them) and the app module (`app`, built in
each gunicorn worker after the fork, from the config and topology the master made).
"""

import os
import shlex
import signal
import threading

worker_class = "uvicorn.workers.UvicornWorker"
graceful_timeout = 5
BACKEND_ENV = "LIGHTTTS_BACKEND"  # the master's settings and topology as JSON, for the workers it forks
_master: dict = {}


def on_starting(server):
    import msgspec

    from light_tts.server.launch.launcher import ServerProcesses, SharedState, check_placement, resolve_model_dir
    from light_tts.server.runtime.config import ServerConfig
    from light_tts.server.runtime.defaults import sized_to_host
    from light_tts.server.runtime.settings import load_settings
    from light_tts.server.runtime.topology import PortArgs

    cfg = ServerConfig.from_args(shlex.split(os.environ.get("LIGHTTTS_ARGS", "")))
    cfg = resolve_model_dir(cfg.replace(httpserver_workers=server.cfg.workers))
    for note in cfg.ignored_flags():
        server.log.warning(note)
    cfg, derived = sized_to_host(cfg.replace(given=(*cfg.given, "httpserver_workers")))  # gunicorn's -w
    for line in derived:
        server.log.info(f"derived for this host: {line}")
    settings, ports = load_settings(cfg), PortArgs.create(cfg)
    for line in settings.topology.log_lines():
        server.log.info(line)
    check_placement(settings)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = ports.metrics_dir
    os.environ[BACKEND_ENV] = msgspec.json.encode((settings, ports)).decode()
    shared = SharedState(settings, ports)
    procs = ServerProcesses(settings, ports, shared)
    procs.start(start_http=False)  # gunicorn serves HTTP; /readiness reports 503 until the models are loaded
    _master.update(shared=shared, procs=procs, exit_code=0)
    threading.Thread(target=_supervise, args=(procs,), daemon=True).start()


def _supervise(procs):
    """Like the launcher: a backend that fails to start or dies stops the whole server with exit code 1."""
    code = procs.watch() if procs.wait_ready() else 1
    if code and not procs.stop_requested:
        _master["exit_code"] = code
        os.kill(os.getpid(), signal.SIGTERM)


def on_exit(server):
    procs, shared = _master["procs"], _master["shared"]
    procs.stop_requested = True
    procs.shutdown()
    shared.cleanup()
    if _master["exit_code"]:
        os._exit(_master["exit_code"])


def __getattr__(name):
    """`wsgi_wrapper:app`: each gunicorn worker builds the app on first access, taking a free HTTP rank."""
    if name != "app":
        raise AttributeError(name)
    import msgspec

    from light_tts.server.api.app import create_app
    from light_tts.server.ipc.process_table import ProcessTable
    from light_tts.server.ipc.shm import RequestSlots
    from light_tts.server.runtime.process import set_process_title
    from light_tts.server.runtime.settings import ServerSettings
    from light_tts.server.runtime.topology import PortArgs

    settings, ports = msgspec.json.decode(os.environ[BACKEND_ENV], type=tuple[ServerSettings, PortArgs])
    table = ProcessTable(settings.cfg, ports.shm_prefix, ports.lock_path, topology=settings.topology)
    rank, previous = table.claim_row("http", os.getpid())
    if previous:  # a restarted worker: free what the dead one held
        slots = RequestSlots(settings.shm, ports.shm_prefix, ports.lock_path)
        slots.release_all_of(previous)
        slots.close()
    set_process_title(f"http{rank}", "gunicorn worker")
    app = globals()["app"] = create_app(settings, ports, rank)
    return app
