"""A stand-in for the TTS server that streams silence on a prepared schedule: to test the capacity benchmark's
stall counting against known gaps, and to measure the benchmark client's own overhead at hundreds of streams
(no model, so every delay it records beyond the schedule is the client's or the network's).

    python -m light_tts.bench.fake_stream_server --port 18090 [--first_chunk_s 0.1 --chunk_audio_s 1 --chunks 10
        --rtf 0.5]

POST /inference_zero_shot answers 200 with a chunked int16 body: chunk k of `num_samples` is sent `send_s`
seconds after the request body was read, per schedule number (form field `seed` % number of schedules). With
`voices_api`, /v1/audio/voices lists, saves and deletes voices (ids only, nothing is kept); any other path
answers 404. Every request is noted in `seen` (method, path, the multipart fields found). Plain asyncio
HTTP/1.1 with keep-alive, enough for the benchmark's httpx client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading

from light_tts.bench.serving.player import BYTES_PER_SAMPLE, SAMPLE_RATE

Schedule = list[tuple[float, int]]  # (send_s since the request arrived, num_samples)
FIELD = re.compile(rb'name="(\w+)"(?:; filename="[^"]*")?\r\n(?:[^\r\n]+\r\n)*\r\n')


def regular_schedule(first_chunk_s: float, chunk_audio_s: float, num_chunks: int, rtf: float) -> Schedule:
    """A server at real-time factor `rtf`: the first chunk after `first_chunk_s`, then one every rtf x chunk."""
    n = round(chunk_audio_s * SAMPLE_RATE)
    return [(first_chunk_s + k * chunk_audio_s * rtf, n) for k in range(num_chunks)]


class ScheduledStreamServer:
    def __init__(self, schedules: list[Schedule], host: str = "127.0.0.1", port: int = 0, voices_api: bool = False):
        self.schedules, self.host, self.port, self.voices_api = schedules, host, port, voices_api
        self.server: asyncio.Server | None = None
        self.seen: list[tuple[str, str, dict[str, bytes]]] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, self.host, self.port, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://{self.host}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                method, path = request_line.split(" ")[:2]
                fields = form_fields(body)
                self.seen.append((method, path, fields))
                if path.startswith("/inference_zero_shot"):
                    await self.stream(writer, fields)
                elif self.voices_api and path.startswith("/v1/audio/voices"):
                    answer(writer, *self.voices(method, path))
                else:
                    answer(writer, 404, {"error": "not found", "kind": "not_found"})
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    def voices(self, method: str, path: str) -> tuple[int, dict]:
        if method == "GET":
            return 200, {"object": "list", "data": []}
        if method == "POST":
            return 201, {"id": f"voice_{len(self.seen)}", "object": "voice"}
        return 200, {"id": path.rsplit("/", 1)[1], "object": "voice", "deleted": True}

    async def stream(self, writer: asyncio.StreamWriter, fields: dict[str, bytes]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        schedule = self.schedules[int(fields.get("seed", b"0")) % len(self.schedules)]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for send_s, num_samples in schedule:
            await asyncio.sleep(start + send_s - loop.time())
            writer.write(b"%x\r\n%s\r\n" % (num_samples * BYTES_PER_SAMPLE, bytes(num_samples * BYTES_PER_SAMPLE)))
            await writer.drain()
        writer.write(b"0\r\n\r\n")


def form_fields(body: bytes) -> dict[str, bytes]:
    """Name -> value of the parts of a multipart body (values up to the next boundary line)."""
    out, matches = {}, list(FIELD.finditer(body))
    for m, nxt in zip(matches, [*matches[1:], None]):
        end = body.rfind(b"\r\n--", m.end(), nxt.start() if nxt else len(body))
        out[m.group(1).decode()] = body[m.end() : end]
    return out


def answer(writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
    msg = json.dumps(payload).encode()
    writer.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (status, len(msg), msg)
    )


class ServerThread:
    """The server on its own event loop in a daemon thread (for tests): `url` once started, `stop()` to end it."""

    def __init__(self, schedules: list[Schedule], voices_api: bool = False):
        self.loop = asyncio.new_event_loop()
        self.server = ScheduledStreamServer(schedules, voices_api=voices_api)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)

    def stop(self) -> None:
        async def close():
            self.server.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--first_chunk_s", type=float, default=0.1)
    p.add_argument("--chunk_audio_s", type=float, default=1.0)
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--rtf", type=float, default=0.5)
    args = p.parse_args()
    schedule = regular_schedule(args.first_chunk_s, args.chunk_audio_s, args.chunks, args.rtf)

    async def serve():
        server = ScheduledStreamServer([schedule], args.host, args.port)
        print(f"serving on {await server.start()}", flush=True)
        await server.server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
