"""lighttts-stream: one streaming zero-shot request; prints time to first audio and each chunk, writes a WAV file.

    lighttts-stream --prompt_wav voice.wav --prompt_text "what the voice says" --tts_text "Text to speak." \
        --out stream.wav [--url http://127.0.0.1:8080 --seed 0 | --voice_id voice_...]

A stream the server (or the network) cuts short is reported in one line with exit status 1: the audio received
so far is still written, so that it can be inspected.
"""

from __future__ import annotations

import time

from light_tts.clients.common import (
    BYTES_PER_SECOND,
    ClientError,
    auth_headers,
    build_parser,
    error_message,
    parse_args,
    report,
    run_client,
    transport_message,
    write_audio,
    zero_shot_form,
)


def stream(args) -> None:
    import httpx

    data, files = zero_shot_form(args, stream=True)
    pcm, start, first = bytearray(), time.perf_counter(), None
    try:
        with httpx.stream(
            "POST",
            f"{args.url}/inference_zero_shot",
            data=data,
            files=files,
            headers=auth_headers(args.api_key),
            timeout=args.timeout_s,
        ) as response:
            if response.status_code != 200:
                raise ClientError(error_message(response.status_code, response.read()))
            for chunk in response.iter_bytes():
                now = time.perf_counter() - start
                first = now if first is None else first
                pcm += chunk
                if not args.quiet:
                    report(
                        f"{now:7.3f} s  +{len(chunk) / BYTES_PER_SECOND:.3f} s audio "
                        f"(total {len(pcm) / BYTES_PER_SECOND:.2f} s)",
                        args.out,
                    )
    except httpx.TransportError as e:
        if pcm:
            write_audio(args.out, bytes(pcm[: len(pcm) // 2 * 2]))
        received = f" after {len(pcm) / BYTES_PER_SECOND:.2f} s of audio" if pcm else ""
        raise ClientError(f"stream cut short{received} ({transport_message(e)})") from None
    if not pcm:
        raise ClientError("the server answered 200 with no audio")
    if len(pcm) % 2:
        raise ClientError(f"stream ended mid-sample ({len(pcm)} bytes): the audio is truncated")
    elapsed = time.perf_counter() - start
    write_audio(args.out, bytes(pcm))
    report(
        f"first audio after {first:.3f} s; {len(pcm) / BYTES_PER_SECOND:.2f} s of audio in {elapsed:.2f} s "
        f"-> {args.out}",
        args.out,
    )


def main(argv: list[str] | None = None, default_out: str = "stream.wav") -> None:
    parser = build_parser(__doc__, "http://127.0.0.1:8080", default_out)
    parser.add_argument("--timeout_s", type=float, default=600)
    parser.add_argument("--quiet", action="store_true", help="no line per chunk")
    args = parse_args(parser, argv)
    run_client("lighttts-stream", lambda: stream(args))


if __name__ == "__main__":
    main()
