"""Client: one streaming zero-shot request; prints time to first audio and chunk arrivals, writes a WAV file.

    python test/test_zs_stream.py --prompt_wav voice.wav --prompt_text "what the voice says" \
        --tts_text "Text to speak." --out stream.wav [--url http://127.0.0.1:8080 --seed 0]
"""

import argparse
import time
import wave


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--prompt_wav", required=True)
    parser.add_argument("--prompt_text", required=True)
    parser.add_argument("--tts_text", required=True)
    parser.add_argument("--tts_model_name", default="default")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default="zs_stream.wav")
    args = parser.parse_args()

    data = {"tts_text": args.tts_text, "prompt_text": args.prompt_text, "stream": "true",
            "tts_model_name": args.tts_model_name}
    if args.seed is not None:
        data["seed"] = str(args.seed)
    with open(args.prompt_wav, "rb") as f:
        files = {"prompt_wav": ("prompt.wav", f.read(), "audio/wav")}
    pcm, start, first = bytearray(), time.perf_counter(), None
    with httpx.stream("POST", f"{args.url}/inference_zero_shot", data=data, files=files, timeout=600) as response:
        if response.status_code != 200:
            response.read()
            raise SystemExit(f"HTTP {response.status_code}: {response.text}")
        for chunk in response.iter_bytes():
            now = time.perf_counter() - start
            first = now if first is None else first
            pcm += chunk
            print(f"{now:7.3f} s  +{len(chunk) / 48000:.3f} s audio (total {len(pcm) / 48000:.2f} s)")
    elapsed = time.perf_counter() - start
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(bytes(pcm))
    seconds = len(pcm) / 48000
    print(f"first audio after {first:.3f} s; {seconds:.2f} s of audio in {elapsed:.2f} s -> {args.out}")


if __name__ == "__main__":
    main()
