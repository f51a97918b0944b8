"""Ordinary text never gets a 500, through the real server: brackets, escapes, symbols, combining marks, text
without punctuation, lone surrogates; HTTP and the WebSocket give the same verdict for the same text."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from server_harness import voice_wav

FIXED = 5  # speech tokens per sentence: keeps the random model's output short, and counts sentences
AUDIO_BYTES_PER_SENTENCE = FIXED * 960 * 2


def llm_tokens(server) -> float:
    return sum(v for (name, _), v in server.metrics().items() if name == "lighttts_llm_tokens_total")


def post(server, text: str) -> httpx.Response:
    data = {"tts_text": text, "prompt_text": "A prompt.", "seed": "1", "fixed_speech_tokens": str(FIXED)}
    files = {"prompt_wav": ("p.wav", voice_wav(8), "audio/wav")}
    return httpx.post(f"{server.url}/inference_zero_shot", data=data, files=files, timeout=120)


@pytest.mark.parametrize(
    "text", ["See [1] for details.", "Room [2b] is free.", "Hi \x1b[31mred\x1b[0m there.", "a" + "\u0301" * 900, "$$$"]
)
def test_ordinary_text_is_spoken(server, text):
    r = post(server, text)
    assert r.status_code == 200, r.text
    assert len(r.content) == AUDIO_BYTES_PER_SENTENCE


def test_the_normaliser_falling_back_is_logged(server):
    assert "wetext failed on 'See [1] for details.'" in server.log_path.read_text()


def test_text_without_punctuation_is_split_by_the_token_budget(server):
    before = llm_tokens(server)
    r = post(server, "word " * 300)  # ~900 tokens of the tiny tokenizer, no sentence break
    assert r.status_code == 200, r.text
    num_sentences = (llm_tokens(server) - before) / FIXED
    assert num_sentences >= 6 and len(r.content) == num_sentences * AUDIO_BYTES_PER_SENTENCE


@pytest.mark.parametrize("text", ["?!...", "😀😀😀", "\x1b[0m", "---"])
def test_nothing_to_speak_is_a_400_over_http_and_the_websocket(server, text):
    r = post(server, text)
    assert r.status_code == 400 and r.json()["kind"] == "bad_text", r.text
    audio, error, code = asyncio.run(bistream(server, [json.dumps({"tts_text": text})]))
    assert (audio, error["kind"], code) == (b"", "bad_text", 1008)


def test_finish_with_no_text_is_an_error_not_audio(server):
    audio, error, code = asyncio.run(bistream(server, []))
    assert (audio, error["kind"], code) == (b"", "bad_text", 1008)


def test_lone_surrogate_in_a_piece_is_a_400_class_close(server):
    pieces = [json.dumps({"tts_text": "Fine so far. "}), json.dumps({"tts_text": "broken \ud800 here"})]
    _, error, code = asyncio.run(bistream(server, pieces))
    assert error["kind"] == "bad_text" and "surrogate" in error["error"] and code == 1008
    server.wait_slots_free(5.0)


def test_websocket_pieces_with_brackets_and_escapes_are_spoken(server):
    pieces = [json.dumps({"tts_text": "See [1] "}), json.dumps({"tts_text": "and \x1b[1mbold\x1b[0m."})]
    audio, error, code = asyncio.run(bistream(server, pieces))
    assert error is None and code == 1000 and len(audio) == AUDIO_BYTES_PER_SENTENCE


async def bistream(server, pieces: list[str]) -> tuple[bytes, dict | None, int]:
    """(audio, the error event or None, close code) of one bistream session that sends `pieces` then finish."""
    audio, error = bytearray(), None
    async with websockets.connect(f"{server.url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:
        await ws.send(json.dumps({"prompt_text": "A prompt.", "seed": 1, "fixed_speech_tokens": FIXED}))
        await ws.send(voice_wav(8))
        try:
            for piece in pieces:
                await ws.send(piece)
            await ws.send(json.dumps({"finish": True}))
        except websockets.ConnectionClosed:
            pass  # the server refused an earlier piece
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    audio += message
                else:
                    error = json.loads(message)
        except websockets.ConnectionClosed:
            pass
    return bytes(audio), error, ws.close_code
