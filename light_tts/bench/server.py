"""End-to-end server benchmark: start the real server, sweep client concurrency, stop it.

    python -m light_tts.bench.server --model_dir DIR --out OUT [--concurrency 1 4 16] [-- SERVER FLAGS...]

Writes OUT/prompt.wav (a synthetic 3 s voice), OUT/server.log, and the results of the packaged client
light_tts.clients.bench (lighttts-bench: OUT/zs_speed_stream.json/.png, OUT/zs_speed_nonstream.json/.png): time to first
audio percentiles, real-time
factor and audio seconds per second at each concurrency level, failures counted by client and server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from light_tts.bench.serving.local_server import local_server, write_prompt_wav
from light_tts.clients import bench as bench_client

TTS_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet green forest."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests_per_level", type=int, default=16)
    parser.add_argument("--ready_timeout_s", type=float, default=400)
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_prompt_wav(args.out / "prompt.wav")
    with local_server(
        args.model_dir, args.port, args.server_args, args.out / "server.log", args.ready_timeout_s
    ) as url:
        for stream in ("true", "false"):
            name = "stream" if stream == "true" else "nonstream"
            bench_client.main(
                [
                    "--url",
                    url,
                    "--prompt_wav",
                    str(args.out / "prompt.wav"),
                    "--prompt_text",
                    "A short prompt.",
                    "--tts_text",
                    TTS_TEXT,
                    "--stream",
                    stream,
                    "--concurrency",
                    *map(str, args.concurrency),
                    "--requests_per_level",
                    str(args.requests_per_level),
                    "--out",
                    str(args.out / f"zs_speed_{name}.json"),
                    "--plot",
                    str(args.out / f"zs_speed_{name}.png"),
                ]
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
