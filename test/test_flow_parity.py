"""Flow parity with upstream CosyVoice2 (ace7c47) on the tiny fixture: noise, whole-utterance and first streamed
chunk."""

import pytest
import torch

from light_tts.errors import ModelDirError
from light_tts.model_dir import load_model_config
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.tools.parity import rel_l2


@pytest.fixture(scope="module")
def flow_io(fixture_dir):
    cfg = load_model_config(fixture_dir)
    flow = Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt"))
    io = torch.load(fixture_dir / "flow_hift_io.pt", weights_only=False)
    return flow, io


def test_noise_head_is_upstream_seed0(flow_io):
    flow, io = flow_io
    head = io["cfm_rand_noise_head"]
    assert torch.equal(flow.decoder.rand_noise[:, :, : head.shape[2]], head)


def test_mel_nonstream(flow_io):
    flow, io = flow_io
    mel = flow.inference(
        io["token"], io["prompt_token"], io["prompt_feat"], io["embedding"], streaming=False, finalize=True
    )
    assert mel.shape == io["mel_nonstream"].shape
    assert rel_l2(mel, io["mel_nonstream"]) < 1e-4


def test_mel_stream_chunk0(flow_io):
    flow, io = flow_io
    n = io["first_chunk_tokens"]
    mel = flow.inference(
        io["token"][:, :n], io["prompt_token"], io["prompt_feat"], io["embedding"], streaming=True, finalize=False
    )
    assert mel.shape == io["mel_stream_chunk0"].shape
    assert rel_l2(mel, io["mel_stream_chunk0"]) < 1e-4


def test_streaming_mask_matters(flow_io):
    """The chunk-masked and full-attention runs of the same tokens differ, so the parity tests above can fail."""
    flow, io = flow_io
    n = io["first_chunk_tokens"]
    args = (io["token"][:, :n], io["prompt_token"], io["prompt_feat"], io["embedding"])
    assert rel_l2(flow.inference(*args, streaming=False, finalize=False), io["mel_stream_chunk0"]) > 1e-3


def test_strict_loading_names_missing_keys(fixture_dir, tmp_path):
    cfg = load_model_config(fixture_dir)
    sd = torch.load(fixture_dir / "flow.pt", weights_only=True)
    del sd["encoder.up_encoders.0.self_attn.pos_bias_u"]
    torch.save(sd, tmp_path / "flow.pt")
    with pytest.raises(ModelDirError, match="pos_bias_u"):
        Flow.from_checkpoint(cfg.flow, tmp_path / "flow.pt")
