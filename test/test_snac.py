"""SNAC 24 kHz: our decoder against the `snac` package with random weights (the same noise on both sides), the
token -> frame mapping and its validation (a genuine code 0 included), the window schedule, and the batched
decode engine against each stream alone."""

import numpy as np
import pytest
import torch

from light_tts.decode.snac.snac_engine import SNACEngine
from light_tts.decode.snac.snac_runner import decode_rows
from light_tts.models.orpheus.config import SNACConfig
from light_tts.models.orpheus.frames import FrameIds, FrameParser, WindowSchedule, frames_to_codes
from light_tts.models.orpheus.snac import SNACDecoder, counter_noise, torch_noise
from light_tts.tools.make_orpheus import snac_config_json, snac_state_dict

snac = pytest.importorskip("snac")

TINY = SNACConfig(encoder_dim=4, decoder_dim=64)
IDS = FrameIds(first_audio=1000)  # audio ids 1000 + 4096 p + c


def audio_id(position: int, code: int) -> int:
    return IDS.first_audio + 4096 * position + code


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A random snac_24khz-layout checkpoint (weight-norm keys, encoder included), as make_model writes it."""
    sd = snac_state_dict(TINY, torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("snac")
    import json

    (out / "config.json").write_text(json.dumps(snac_config_json(TINY)))
    torch.save(sd, out / "pytorch_model.bin")
    return out, sd


@pytest.fixture(scope="module")
def ours(released):
    return SNACDecoder.from_state_dict(TINY, released[1], "test")


@pytest.mark.parametrize("num_frames,batch", [(4, 3), (1, 1), (7, 2)])
def test_decode_matches_the_snac_package(released, ours, num_frames, batch):
    ref = snac.SNAC.from_pretrained(str(released[0])).eval()  # the package loads what we write
    codes = [torch.randint(0, 4096, (batch, num_frames * s)) for s in (1, 2, 4)]
    codes[0][0, 0] = 0  # code 0 and 4095 are ordinary codes
    codes[2][-1, -1] = 4095
    with torch.no_grad():
        torch.manual_seed(11)
        expected = ref.decode(codes)
        torch.manual_seed(11)
        got = ours(codes, torch_noise())  # SNAC's own noise draws, in its order
    assert got.shape == (batch, 1, 2048 * num_frames)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # noise off on both sides
        for block in ref.decoder.model[2:6]:
            block.block[2].forward = lambda x: x
        torch.testing.assert_close(ours(codes, None), ref.decode(codes), atol=1e-6, rtol=1e-5)


def test_old_weight_norm_keys_load_the_same(released, ours):
    sd = {}
    for key, value in released[1].items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        sd[key.replace(".parametrizations.weight.original1", ".weight_v")] = value
    old = SNACDecoder.from_state_dict(TINY, sd, "old")
    for (name, a), b in zip(ours.state_dict().items(), old.state_dict().values()):
        assert torch.equal(a, b), name


def test_frames_take_code_zero_and_drop_what_is_not_the_next_position():
    parser = FrameParser(IDS)
    frame = [audio_id(p, c) for p, c in enumerate([0, 5, 4095, 0, 7, 8, 0])]
    stream = [frame[0], 128009, frame[1], audio_id(1, 9), frame[2], 5, frame[3]]
    # 128009 and 5 are not audio; audio_id(1, 9) is position 1 again while position 2 is due; the last is frame[3]
    assert parser.feed(stream) == [] and parser.num_dropped == 3
    assert parser.feed(frame[4:] + frame) == [(0, 5, 4095, 0, 7, 8, 0), (0, 5, 4095, 0, 7, 8, 0)]
    # below the audio ids, and "code 4096" of position 0 (which is position 1's code 0): both dropped
    assert parser.feed([IDS.first_audio - 1, audio_id(0, 4096)]) == [] and parser.partial == []
    assert parser.num_dropped == 5


def test_frames_to_codebooks_in_time_order():
    c0, c1, c2 = frames_to_codes([(1, 2, 3, 4, 5, 6, 7), (11, 12, 13, 14, 15, 16, 17)])
    assert c0.tolist() == [1, 11] and c1.tolist() == [2, 5, 12, 15]
    assert c2.tolist() == [3, 4, 6, 7, 13, 14, 16, 17]


def emitted(schedule: WindowSchedule) -> list[tuple[int, int, int, int]]:
    out = []
    while (w := schedule.next_window()) is not None:
        out.append((w.start, w.end, w.emit_from, w.emit_to))
    return out


def test_window_schedule_emits_every_frame_once():
    s = WindowSchedule()
    s.add_frames(3)
    assert emitted(s) == []
    s.add_frames(1)  # the first window: frames 0 and 1 (first audio after 28 tokens)
    assert emitted(s) == [(0, 4, 0, 2)]
    s.add_frames(2)  # steady state: the window's second frame
    assert emitted(s) == [(1, 5, 2, 3), (2, 6, 3, 4)]
    s.add_frames(0, is_last=True)  # ended after its last window: frames 4 and 5 from that window's kept tail
    assert emitted(s) == [] and s.tail_frames() == (4, 6) and s.is_done
    s = WindowSchedule()
    s.add_frames(5, is_last=True)  # the end known before the last window: it emits its whole tail itself
    assert emitted(s) == [(0, 4, 0, 2), (1, 5, 2, 5)] and s.is_done
    s = WindowSchedule()
    s.add_frames(2, is_last=True)  # shorter than a window: all of it at once
    assert emitted(s) == [(0, 2, 0, 2)]
    s = WindowSchedule()
    s.add_frames(0, is_last=True)
    assert emitted(s) == [] and s.is_done


def test_counter_noise_depends_on_seed_and_window_only():
    seeds, counters = torch.tensor([5, 5, 6]), torch.tensor([4, 5, 4])
    batch = counter_noise(seeds, counters)(1, 3, 4096)
    alone = counter_noise(seeds[2:], counters[2:])(1, 1, 4096)
    assert torch.equal(batch[2], alone[0]) and not torch.equal(batch[0], batch[1])
    assert not torch.equal(batch[0], batch[2]) and abs(float(batch.std()) - 1) < 0.05


def stream_ids(rng: np.random.Generator, num_frames: int, junk_every: int = 0) -> list[int]:
    ids = []
    for f in range(num_frames):
        ids += [audio_id(p, int(rng.integers(0, 4096))) for p in range(7)]
        if junk_every and f % junk_every == 0:
            ids.append(7)  # a text id: dropped
    return ids


SEEDS = {"a": 1, "b": 2**40 + 7, "c": 3}


def run_engine(engine: SNACEngine, streams: dict[str, list[int]], piece: int) -> dict[str, np.ndarray]:
    """Feed each stream `piece` ids at a time between steps; collect each one's audio."""
    audio = {k: [] for k in streams}
    pos = {k: 0 for k in streams}
    while engine.num_active():
        for k, ids in streams.items():
            if k in engine.requests:
                chunk = ids[pos[k] : pos[k] + piece]
                pos[k] += len(chunk)
                engine.push_tokens(k, chunk, pos[k] >= len(ids))
        for out in engine.step():
            assert out.error is None
            audio[out.req_id].append(out.audio)
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in audio.items()}


def test_engine_batches_streams_and_each_gets_its_own_audio(ours):
    """Streams of different lengths (a short one, one with junk ids) decoded together equal each decoded alone,
    window by window with its own noise; N frames give N x 2048 samples."""
    from light_tts.model_config import QwenConfig
    from light_tts.models.orpheus.config import OrpheusConfig, OrpheusTokens

    tokens = OrpheusTokens(0, 0, 0, 0, 0, 0, 0, 0, 0, first_audio=IDS.first_audio)
    cfg = OrpheusConfig(model_dir=None, body=QwenConfig(), tokens=tokens, snac=TINY)
    rng = np.random.default_rng(0)
    streams = {"a": stream_ids(rng, 9), "b": stream_ids(rng, 2), "c": stream_ids(rng, 6, junk_every=2)}
    engine = SNACEngine(cfg, model=ours, max_batch_size=8)
    for k in streams:
        engine.add_request(k, seed=SEEDS[k])
    together = run_engine(engine, streams, piece=5)
    for k, ids in streams.items():
        alone_engine = SNACEngine(cfg, model=ours, max_batch_size=8)
        alone_engine.add_request(k, seed=SEEDS[k])
        alone = run_engine(alone_engine, {k: ids}, piece=100)[k]
        num_frames = sum(1 for t in ids if t >= IDS.first_audio) // 7
        assert len(together[k]) == len(alone) == 2048 * num_frames
        np.testing.assert_allclose(together[k], alone, atol=2e-6)
    # the windows are the reference's: frame 5 of `a` is the second frame of the window over frames 4..7
    frames = FrameParser(IDS).feed(streams["a"])
    window = decode_rows(
        ours, torch.tensor([frames[4:8]]), torch.tensor([SEEDS["a"]]), torch.tensor([8]), torch.float32
    )[0].numpy()
    np.testing.assert_allclose(together["a"][5 * 2048 : 6 * 2048], window[2048:4096], atol=2e-6)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def tiny_orpheus_config():
    from light_tts.model_config import QwenConfig
    from light_tts.models.orpheus.config import OrpheusConfig, OrpheusTokens

    tokens = OrpheusTokens(0, 0, 0, 0, 0, 0, 0, 0, 0, first_audio=IDS.first_audio)
    return OrpheusConfig(model_dir=None, body=QwenConfig(), tokens=tokens, snac=TINY)


def test_windows_ahead_of_their_listeners_wait_and_gather(ours):
    """First windows go at once; after that a stream's windows wait until they fill a batch (one per stream) or
    its listener is about to run dry, and then go together, several of one stream in one decode; the audio is the
    same as one window a step."""
    clock = FakeClock()
    rng = np.random.default_rng(1)
    streams = {"a": stream_ids(rng, 8), "b": stream_ids(rng, 8), "c": stream_ids(rng, 8)}
    engine = SNACEngine(tiny_orpheus_config(), model=ours, max_batch_size=8, clock=clock)
    for k in streams:
        engine.add_request(k, seed=SEEDS[k])
    got = {k: [] for k in streams}

    def step() -> set[str]:
        outs = engine.step()
        for out in outs:
            got[out.req_id].append(out.audio)
        return {out.req_id for out in outs}

    for k, ids in streams.items():  # 4 frames each: every first window is ready
        engine.push_tokens(k, ids[:28], False)
    assert step() == {"a", "b", "c"} and len(engine.take_step_times()) == 1  # first audio at once, one decode
    engine.push_tokens("a", streams["a"][28:42], False)  # two more windows of `a` only
    assert engine.has_work() and step() == set()  # they wait: 2 windows, 3 streams, a deadline 70 ms away
    assert not engine.has_work() and 0 < engine.wake_in_s() < 0.07
    clock.t += engine.wake_in_s()  # `a`'s listener is about to run dry: both windows in one decode
    assert engine.has_work() and step() == {"a"} and len(engine.take_step_times()) == 1
    assert len(got["a"][-1]) == 2 * 2048
    for k in "bc":  # one window each of b and c, and the rest of a: a full batch goes at once
        engine.push_tokens(k, streams[k][28:35], False)
    engine.push_tokens("a", streams["a"][42:49], False)
    assert step() == {"a", "b", "c"} and len(engine.take_step_times()) == 1
    for k, ids in streams.items():  # the ends: a request whose frames are all in goes at once
        engine.push_tokens(k, ids[len(ids) - 7 if k == "a" else 35 :], True)
    while engine.num_active():
        step()
    for k, ids in streams.items():
        alone = SNACEngine(tiny_orpheus_config(), model=ours, max_batch_size=8)
        alone.add_request(k, seed=SEEDS[k])
        want = run_engine(alone, {k: ids}, piece=7)[k]  # one window a step
        np.testing.assert_allclose(np.concatenate(got[k]), want, atol=2e-6)
        assert len(want) == 8 * 2048


def test_engine_refuses_a_speed_change(ours):
    from light_tts.model_config import QwenConfig
    from light_tts.models.orpheus.config import OrpheusConfig, OrpheusTokens

    cfg = OrpheusConfig(model_dir=None, body=QwenConfig(), tokens=OrpheusTokens(*[0] * 9, first_audio=1000), snac=TINY)
    engine = SNACEngine(cfg, model=ours)
    engine.add_request("slow", None, 1, False, 0.5)
    assert engine.has_work()
    (out,) = engine.step()
    assert out.finished and out.error_kind == "bad_request" and "speed" in out.error and not engine.num_active()


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 1.5e-2), (torch.float16, 3e-3)])
def test_half_precision_snac_within_its_bound(ours, dtype, bound):
    """SNACEngine(dtype=...) (bench.snac --dtype): windows decoded in half precision stay within `bound` (relative L2)
    of float32's (measured on this model: bfloat16 5.6e-3, float16 6.8e-4), finite, same length. The server decodes
    in float32, the reference's precision (half precision measured no faster on an H100: docs/model.md)."""
    rng = np.random.default_rng(0)
    streams = {"a": stream_ids(rng, 9), "b": stream_ids(rng, 5)}
    audio = {}
    for dt in (torch.float32, dtype):
        engine = SNACEngine(tiny_orpheus_config(), model=ours, max_batch_size=8, dtype=dt)
        for k in streams:
            engine.add_request(k, seed=SEEDS[k])
        audio[dt] = run_engine(engine, streams, piece=100)
    for k in streams:
        half, full = audio[dtype][k], audio[torch.float32][k]
        assert len(half) == len(full) == 2048 * len(streams[k]) // 7 and np.isfinite(half).all()
        deviation = np.linalg.norm(half - full) / np.linalg.norm(full)
        assert 0 < deviation < bound, deviation  # 0 would mean the dtype never reached the decoder
