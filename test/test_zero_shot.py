"""Client: one non-streaming zero-shot request; writes the 24 kHz audio to a WAV file.

    python test/test_zero_shot.py --prompt_wav voice.wav --prompt_text "what the voice says" \
        --tts_text "Text to speak." --out out.wav [--url http://127.0.0.1:8080 --speed 1.0 --seed 0]
"""

import argparse
import time
import wave


def save_pcm16(path: str, pcm: bytes, rate: int = 24000) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--prompt_wav", required=True)
    parser.add_argument("--prompt_text", required=True)
    parser.add_argument("--tts_text", required=True)
    parser.add_argument("--tts_model_name", default="default")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default="zero_shot.wav")
    args = parser.parse_args()

    data = {"tts_text": args.tts_text, "prompt_text": args.prompt_text, "stream": "false",
            "tts_model_name": args.tts_model_name, "speed": str(args.speed)}
    if args.seed is not None:
        data["seed"] = str(args.seed)
    with open(args.prompt_wav, "rb") as f:
        files = {"prompt_wav": ("prompt.wav", f.read(), "audio/wav")}
    start = time.perf_counter()
    response = httpx.post(f"{args.url}/inference_zero_shot", data=data, files=files, timeout=600)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"HTTP {response.status_code}: {response.text}")
    seconds = len(response.content) / 2 / 24000
    save_pcm16(args.out, response.content)
    print(f"{seconds:.2f} s of audio in {elapsed:.2f} s (RTF {elapsed / max(seconds, 1e-9):.3f}) -> {args.out}")


if __name__ == "__main__":
    main()
