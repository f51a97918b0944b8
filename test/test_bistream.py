"""Client: text streamed in pieces over the bistream WebSocket (as an LLM would produce it); writes a WAV file.

    python test/test_bistream.py --prompt_wav voice.wav --prompt_text "what the voice says" \
        --tts_text "Text that arrives a few words at a time." --out bistream.wav [--url ws://127.0.0.1:8080]
"""

import argparse
import asyncio
import json
import time
import wave


async def run(args) -> None:
    import websockets

    words = args.tts_text.split(" ")
    pieces = [" ".join(words[i:i + args.words_per_piece]) + " " for i in range(0, len(words), args.words_per_piece)]
    with open(args.prompt_wav, "rb") as f:
        wav = f.read()
    pcm, start, first = bytearray(), time.perf_counter(), None
    async with websockets.connect(f"{args.url}/inference_zero_shot_bistream", max_size=None) as ws:
        start_msg = {"prompt_text": args.prompt_text, "tts_model_name": args.tts_model_name}
        if args.seed is not None:
            start_msg["seed"] = args.seed
        await ws.send(json.dumps(start_msg))
        await ws.send(wav)

        async def send_text():
            for piece in pieces:
                await ws.send(json.dumps({"tts_text": piece}))
                await asyncio.sleep(args.piece_interval_s)
            await ws.send(json.dumps({"finish": True}))

        sender = asyncio.create_task(send_text())
        async for message in ws:
            if isinstance(message, str):
                raise SystemExit(f"server error: {message}")
            first = time.perf_counter() - start if first is None else first
            pcm += message
        await sender
    elapsed = time.perf_counter() - start
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(bytes(pcm))
    print(f"{len(pieces)} text pieces; first audio after {first:.3f} s; "
          f"{len(pcm) / 48000:.2f} s of audio in {elapsed:.2f} s -> {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    parser.add_argument("--prompt_wav", required=True)
    parser.add_argument("--prompt_text", required=True)
    parser.add_argument("--tts_text", required=True)
    parser.add_argument("--tts_model_name", default="default")
    parser.add_argument("--words_per_piece", type=int, default=3)
    parser.add_argument("--piece_interval_s", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default="bistream.wav")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
