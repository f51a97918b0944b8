"""A CosyVoice2 and an Orpheus model in one server, on the CPU (issue 26's "Done when"): each request's audio equals
its own model's offline pipeline for the same text, voice and seed; Orpheus voices are names (the official `openai`
client, /ws/tts, the LightTTS form), prompt audio and unknown voices get a 400, and no slot is left held.

Tolerance: the same length and at most 1 int16 step apart (the engines sample the pipeline's very ids; SNAC decodes
the same windows with the same counter noise in float32; measured: identical). The tiny Orpheus model's
lighttts.json bounds a sentence at 84 ids (12 frames), so a request without fixed_speech_tokens stays short."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import websockets
from server_harness import ServerProcess, voice_wav
from test_synthesis import PROMPT_TEXT, assert_same_audio, reference_pcm

ORPHEUS = "orpheus"
MAX_NEW_TOKENS = 84  # the Orpheus model's sentence bound (lighttts.json): 12 frames


@pytest.fixture(scope="module")
def orpheus_dir(tmp_path_factory):
    from light_tts.tools.make_orpheus import make_orpheus

    orpheus = make_orpheus(tmp_path_factory.mktemp("models") / "orpheus", "tiny", seed=0)
    (orpheus / "lighttts.json").write_text(json.dumps({"max_new_tokens": MAX_NEW_TOKENS}))
    return orpheus


@pytest.fixture(scope="module")
def server(tiny_model_dir, orpheus_dir, tmp_path_factory):
    """The session's tiny CosyVoice2 model (conftest, the default model) beside the Orpheus one."""
    srv = ServerProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("logs") / "orpheus.log",
        "--model_dir",
        f"{ORPHEUS}={orpheus_dir}",
        "--max_req_total_len",
        "1024",
        "--data_dir",
        str(tmp_path_factory.mktemp("voices")),
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def orpheus_pipeline(orpheus_dir):
    import torch

    from light_tts.orpheus_pipeline import OrpheusPipeline

    torch.set_num_threads(1)
    return OrpheusPipeline(orpheus_dir)


def orpheus_pcm(pipeline, text: str, voice: str, seed: int, fixed_tokens: int | None = None) -> bytes:
    from light_tts.decode.engine import to_int16

    chunks = pipeline.synthesize(text, voice, seed=seed, fixed_tokens=fixed_tokens)
    return to_int16(np.concatenate(list(chunks))).tobytes()


def assert_equal_pcm(got: bytes, want: bytes, may_be_empty: bool = False) -> None:
    a, b = np.frombuffer(got, np.int16).astype(np.int32), np.frombuffer(want, np.int16).astype(np.int32)
    assert len(a) == len(b) and (len(a) > 0 or may_be_empty), (len(a), len(b))
    assert len(a) == 0 or np.abs(a - b).max() <= 1, np.abs(a - b).max()


def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def speak_cosyvoice(url: str, text: str, seed: int) -> httpx.Response:
    return httpx.post(
        f"{url}/inference_zero_shot",
        timeout=120,
        data={"tts_text": text, "prompt_text": PROMPT_TEXT, "seed": str(seed)},
        files={"prompt_wav": ("p.wav", voice_wav(1), "audio/wav")},
    )


# The engine's fused body and the offline module score each id within ~2e-7 of each other (float32), so their draws
# agree unless one falls that close to a top-p boundary: seed 5 meets one at its 68th id since the head scores only
# the sampled range (the sampler given the engine's logits draws the engine's id), seeds 3-4 and 6-11 none.
SEED = 6


def test_both_models_at_once_each_equal_their_pipeline(server, pipeline, orpheus_pipeline):
    """An Orpheus request through the official openai client (model and voice by name, 10 frames forced) and a
    CosyVoice2 zero-shot request, sent together: each equals its own pipeline (`pipeline`: conftest's CosyVoice2)."""

    def speak_orpheus() -> bytes:
        with openai_client(server) as client:
            return client.audio.speech.create(
                model=ORPHEUS,
                voice="tara",
                input="Hello there.",
                response_format="pcm",
                extra_body={"seed": SEED, "fixed_speech_tokens": 70},
            ).content

    with ThreadPoolExecutor(2) as pool:
        orpheus, cosyvoice = pool.submit(speak_orpheus), pool.submit(speak_cosyvoice, server.url, "Hello there.", 7)
        orpheus_audio, cosyvoice_reply = orpheus.result(), cosyvoice.result()
    want = orpheus_pcm(orpheus_pipeline, "Hello there.", "tara", SEED, fixed_tokens=70)
    assert len(want) == 2 * 10 * 2048  # 70 ids: 10 frames of 2048 samples
    assert_equal_pcm(orpheus_audio, want)
    assert cosyvoice_reply.status_code == 200, cosyvoice_reply.text
    assert_same_audio(cosyvoice_reply.content, reference_pcm(pipeline, "Hello there.", voice_wav(1), 7))


def test_ws_tts_finds_the_model_by_its_voice(server, orpheus_pipeline):
    """/ws/tts {"text", "voice": "leo", "seed"} with no model: the Orpheus model (the server's default is
    CosyVoice2), streamed as int16 frames ended by b"__END__"."""

    async def run() -> bytes:
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/tts") as ws:
            await ws.send(json.dumps({"text": "Good morning.", "voice": "leo", "seed": 9, "fixed_speech_tokens": 42}))
            pcm = b""
            while (frame := await asyncio.wait_for(ws.recv(), 120)) != b"__END__":
                assert isinstance(frame, bytes), frame
                pcm += frame
            return pcm

    assert_equal_pcm(asyncio.run(run()), orpheus_pcm(orpheus_pipeline, "Good morning.", "leo", 9, fixed_tokens=42))


def test_speech_stream_session_speaks_an_orpheus_voice(server, orpheus_pipeline):
    """/v1/audio/speech/stream (vLLM-Omni's protocol): session.config names the voice, pcm streamed."""

    async def run() -> bytes:
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/audio/speech/stream") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "session.config",
                        "voice": "mia",
                        "model": ORPHEUS,
                        "seed": 2,
                        "response_format": "pcm",
                        "stream_audio": True,
                        "fixed_speech_tokens": 28,
                    }
                )
            )
            for event in ({"type": "input.text", "text": "Thanks."}, {"type": "input.done"}, {"type": "session.close"}):
                await ws.send(json.dumps(event))
            pcm = b""
            async for frame in ws:
                if isinstance(frame, bytes):
                    pcm += frame
                else:
                    assert json.loads(frame)["type"] in ("audio.start", "audio.done", "session.done"), frame
            return pcm

    assert_equal_pcm(asyncio.run(run()), orpheus_pcm(orpheus_pipeline, "Thanks.", "mia", 2, fixed_tokens=28))


def test_the_lighttts_form_names_an_orpheus_voice(server, orpheus_pipeline):
    """voice_id names the voice (streamed, 5 frames forced); without tts_model_name the voice picks its model, and
    without a forced length (not streamed) the sentence ends at the model's own bound, 84 ids, in which this
    random model makes no whole frame: empty, as offline."""
    for fixed in (35, None):
        data = {
            "tts_text": "Hi.",
            "voice_id": "zoe",
            "seed": "3",
            **(
                {"stream": "false"}
                if fixed is None
                else {"fixed_speech_tokens": str(fixed), "stream": "true", "tts_model_name": ORPHEUS}
            ),
        }
        r = httpx.post(f"{server.url}/inference_zero_shot", data=data, timeout=120)
        assert r.status_code == 200, r.text
        assert_equal_pcm(
            r.content, orpheus_pcm(orpheus_pipeline, "Hi.", "zoe", 3, fixed_tokens=fixed), may_be_empty=fixed is None
        )


def test_voices_are_listed_with_their_model(server):
    voices = httpx.get(f"{server.url}/v1/audio/voices").json()["data"]
    named = [(v["id"], v["model"]) for v in voices if "model" in v]
    assert named[:2] == [("tara", ORPHEUS), ("leah", ORPHEUS)] and len(named) == 8
    assert httpx.get(f"{server.url}/v1/audio/voices/leo").json()["model"] == ORPHEUS


def test_bad_input_gets_a_400(server):
    """An unknown voice, a saved voice or prompt audio sent to Orpheus, Orpheus on the bistream socket: 400s
    (1008 for the socket) that name the model's voices; nothing reaches the engines."""
    with openai_client(server) as client:
        for voice, message in (
            ("alloy", "unknown voice 'alloy' for model 'orpheus': it speaks as tara, leah"),
            ("voice_0123456789abcdef01234567", "model 'orpheus' takes no prompt audio"),
        ):
            with pytest.raises(openai.BadRequestError) as e:
                client.audio.speech.create(model=ORPHEUS, voice=voice, input="Hi.")
            assert e.value.response.json()["error"]["message"].startswith(message), e.value.response.text
        # Orpheus has no modes: an instruction or a mode is refused before anything runs
        for extra in ({"instructions": "Speak softly."}, {"extra_body": {"mode": "cross_lingual"}}):
            with pytest.raises(openai.BadRequestError) as e:
                client.audio.speech.create(model=ORPHEUS, voice="tara", input="Hi.", **extra)
            assert e.value.response.json()["error"]["message"].startswith("model 'orpheus' has no modes"), extra
    form = {"tts_text": "Hi.", "prompt_text": PROMPT_TEXT, "tts_model_name": ORPHEUS}
    r = httpx.post(
        f"{server.url}/inference_zero_shot",
        data=form,
        timeout=30,
        files={"prompt_wav": ("p.wav", voice_wav(1), "audio/wav")},
    )
    assert r.status_code == 400 and "takes no prompt audio" in r.json()["error"], r.text
    r = httpx.post(
        f"{server.url}/inference_zero_shot",
        data={"tts_text": "Hi.", "tts_model_name": ORPHEUS, "voice_id": "nobody"},
        timeout=30,
    )
    assert r.status_code == 400 and "unknown voice 'nobody'" in r.json()["error"], r.text
    for extra in ({"instruct_text": "Speak softly."}, {"mode": "zero_shot"}):
        r = httpx.post(
            f"{server.url}/inference_zero_shot", data={"tts_text": "Hi.", "voice_id": "tara", **extra}, timeout=30
        )
        assert r.status_code == 400 and r.json()["error"].startswith("model 'orpheus' has no modes"), r.text

    async def sockets() -> tuple[dict, dict, int]:
        ws_url = server.url.replace("http", "ws")
        async with websockets.connect(ws_url + "/ws/tts") as ws:
            await ws.send(json.dumps({"text": "Hi.", "voice": "nobody", "model": ORPHEUS}))
            error = json.loads(await ws.recv())
            assert await ws.recv() == b"__END__"
        async with websockets.connect(ws_url + "/v1/audio/speech/stream") as ws:
            await ws.send(json.dumps({"type": "session.config", "voice": "alloy", "model": ORPHEUS}))
            config_error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008 and "unknown voice 'alloy'" in config_error["message"]
        async with websockets.connect(ws_url + "/inference_zero_shot_bistream") as ws:
            await ws.send(json.dumps({"prompt_text": PROMPT_TEXT, "tts_model_name": ORPHEUS}))
            refused = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        return error, refused, closed.value.rcvd.code

    error, refused, code = asyncio.run(sockets())
    assert error["error"]["code"] == "bad_request" and "unknown voice 'nobody'" in error["message"]
    assert "takes no prompt audio" in refused["error"] and code == 1008


def test_the_playground_speaks_a_named_voice_with_its_model(server):
    """The page offers "tara (orpheus)" beside the saved voices and asks the Orpheus model for it (headless
    Chromium; the random model's natural-length audio is empty, so the check is the request's model and end)."""
    test_playground = pytest.importorskip("test_playground")  # skips where chromium is not installed
    from browser_harness import chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    ok = (
        "lighttts_requests_total",
        (("endpoint", "inference_zero_shot"), ("mode", "named_voice"), ("model", ORPHEUS), ("outcome", "ok")),
    )
    before = server.metrics().get(ok, 0)
    with chromium() as page:
        test_playground.load_playground(page, server.url)
        Select(page.find_element(By.ID, "voice-select")).select_by_visible_text("tara (orpheus)")
        test_playground.set_text(page, "Hi.")
        page.find_element(By.ID, "speak").click()
        WebDriverWait(page, 120).until(lambda d: test_playground.player_state(d)["state"] in ("done", "error"))
        assert test_playground.player_state(page)["state"] == "done", page.find_element(By.ID, "error").text
        assert page.find_elements(By.CSS_SELECTOR, "#voice-list li") == []  # named voices are not saved ones
    assert server.metrics()[ok] == before + 1


def test_no_slot_is_left_held(server):
    server.wait_slots_free(timeout=10)
    log = server.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
