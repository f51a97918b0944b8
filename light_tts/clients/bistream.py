"""lighttts-bistream: text streamed in pieces over the bistream WebSocket (as an LLM would produce it).

    lighttts-bistream --prompt_wav voice.wav --prompt_text "what the voice says" \
        --tts_text "Text that arrives a few words at a time." --out bistream.wav [--url ws://127.0.0.1:8080]

A server error event, an error close code, or a connection dropped without a close frame is reported in one
line with exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import time

from light_tts.clients.common import (
    BYTES_PER_SECOND,
    ClientError,
    auth_headers,
    build_parser,
    error_message,
    parse_args,
    read_file,
    report,
    run_client,
    write_audio,
)


def text_pieces(text: str, words_per_piece: int) -> list[str]:
    words = text.split(" ")
    return [" ".join(words[i : i + words_per_piece]) + " " for i in range(0, len(words), words_per_piece)]


def start_message(args) -> tuple[dict, bytes | None]:
    """The JSON start message, and the prompt audio frame that follows it (none for a saved voice)."""
    message: dict = {"tts_model_name": args.tts_model_name}
    for name in ("seed", "fixed_speech_tokens"):
        if getattr(args, name) is not None:
            message[name] = getattr(args, name)
    if args.voice_id is not None:
        return {**message, "voice_id": args.voice_id}, None
    return {**message, "prompt_text": args.prompt_text}, read_file(args.prompt_wav)


async def run(args) -> None:
    import websockets

    pieces = text_pieces(args.tts_text, args.words_per_piece)
    message, wav = start_message(args)
    pcm, start, first = bytearray(), time.perf_counter(), None
    async with websockets.connect(
        f"{args.url}/inference_zero_shot_bistream", max_size=None, additional_headers=auth_headers(args.api_key)
    ) as ws:
        await ws.send(json.dumps(message))
        if wav is not None:
            await ws.send(wav)

        async def send_text():
            for piece in pieces:
                await ws.send(json.dumps({"tts_text": piece}))
                await asyncio.sleep(args.piece_interval_s)
            await ws.send(json.dumps({"finish": True}))

        sender = asyncio.create_task(send_text())
        try:
            async for frame in ws:
                if isinstance(frame, str):
                    raise ClientError(error_message(None, frame))
                first = time.perf_counter() - start if first is None else first
                pcm += frame
        except websockets.ConnectionClosedError as e:
            received = f" after {len(pcm) / BYTES_PER_SECOND:.2f} s of audio" if pcm else ""
            why = f"close code {e.rcvd.code} {e.rcvd.reason!r}" if e.rcvd else "no close frame"
            raise ClientError(f"stream cut short{received} ({why})") from None
        finally:
            sender.cancel()
    if not pcm:
        raise ClientError("the server closed the stream without audio")
    elapsed = time.perf_counter() - start
    write_audio(args.out, bytes(pcm))
    report(
        f"{len(pieces)} text pieces; first audio after {first:.3f} s; "
        f"{len(pcm) / BYTES_PER_SECOND:.2f} s of audio in {elapsed:.2f} s -> {args.out}",
        args.out,
    )


def main(argv: list[str] | None = None, default_out: str = "bistream.wav") -> None:
    parser = build_parser(__doc__, "ws://127.0.0.1:8080", default_out)
    parser.add_argument("--words_per_piece", type=int, default=3)
    parser.add_argument("--piece_interval_s", type=float, default=0.05)
    args = parse_args(parser, argv)
    run_client("lighttts-bistream", lambda: asyncio.run(run(args)))


if __name__ == "__main__":
    main()
