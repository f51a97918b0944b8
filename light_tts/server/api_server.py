"""The server's command: `python -m light_tts.server.api_server --model_dir DIR [--port 8080 ...]`.

Parses the one ServerConfig and hands it to the launcher (`launch/launcher.py`), which plans the processes,
starts them and supervises them until SIGTERM. `--help` lists every flag.
"""

from __future__ import annotations

from light_tts.server.launch.launcher import launch
from light_tts.server.runtime.config import ServerConfig


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(launch(ServerConfig.from_args(argv)))


if __name__ == "__main__":
    main()
