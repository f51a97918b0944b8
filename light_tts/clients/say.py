"""lighttts-say: one non-streaming zero-shot request; writes the 24 kHz audio to a WAV (or raw PCM) file.

    lighttts-say --prompt_wav voice.wav --prompt_text "what the voice says" --tts_text "Text to speak." \
        --out out.wav [--url http://127.0.0.1:8080 --speed 1.0 --seed 0 | --voice_id voice_...]
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
    write_audio,
    zero_shot_form,
)


def synthesize(args) -> None:
    import httpx

    data, files = zero_shot_form(args, stream=False, speed=args.speed)
    start = time.perf_counter()
    response = httpx.post(
        f"{args.url}/inference_zero_shot",
        data=data,
        files=files,
        headers=auth_headers(args.api_key),
        timeout=args.timeout_s,
    )
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise ClientError(error_message(response.status_code, response.content))
    if not response.content:
        raise ClientError("the server answered 200 with no audio")
    seconds = len(response.content) / BYTES_PER_SECOND
    write_audio(args.out, response.content)
    report(f"{seconds:.2f} s of audio in {elapsed:.2f} s (RTF {elapsed / seconds:.3f}) -> {args.out}", args.out)


def main(argv: list[str] | None = None, default_out: str = "say.wav") -> None:
    parser = build_parser(__doc__, "http://127.0.0.1:8080", default_out)
    parser.add_argument("--speed", type=float, default=1.0, help="0.25-4")
    parser.add_argument("--timeout_s", type=float, default=600)
    args = parse_args(parser, argv)
    run_client("lighttts-say", lambda: synthesize(args))


if __name__ == "__main__":
    main()
