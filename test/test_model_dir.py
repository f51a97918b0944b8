"""The model directory reader: typed config from the released yaml format, and errors that name the file."""

import shutil

import pytest

from light_tts.errors import ModelDirError
from light_tts.model_dir import check_complete, load_model_config, read_hyperpyyaml


def test_fixture_config_reads_dims(fixture_dir):
    cfg = load_model_config(fixture_dir)
    assert cfg.sample_rate == 24000 and cfg.chunk_size == 25 and cfg.token_mel_ratio == 2
    assert cfg.llm.qwen.hidden_size == 64 and cfg.llm.qwen.num_key_value_heads == 2
    assert cfg.llm.qwen.rope_theta == 1e6 and cfg.llm.stop_token_ids == (6561, 6562, 6563)
    assert cfg.llm.sampling.top_k == 25 and cfg.llm.mix_ratio == (5, 15)
    assert cfg.flow.encoder.linear_units == 256 and cfg.flow.encoder.num_blocks == 1
    # `static_chunk_size: !ref <chunk_size> * <token_mel_ratio>` is evaluated, not kept as text
    assert cfg.flow.cfm.estimator.static_chunk_size == 50
    assert cfg.flow.cfm.sigma_min == pytest.approx(1e-6) and cfg.flow.cfm.inference_cfg_rate == 0.7
    assert cfg.hift.base_channels == 64 and cfg.hift.samples_per_frame == 480
    assert cfg.hift.resblock_dilation_sizes == ((1, 3, 5),) * 3
    assert cfg.feat.n_fft == 1920 and cfg.samples_per_token == 960


def test_ref_arithmetic_and_tags(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: 3\nb: !ref <a> * 2 + 1\nc: !new:pkg.Cls\n  k: !ref <b>\nd: !apply:random.seed [1]\n")
    data = read_hyperpyyaml(p)
    assert data["b"] == 7 and data["c"].tag == "pkg.Cls" and data["c"].args == {"k": 7}


def test_missing_dir_and_files(tmp_path, fixture_dir):
    with pytest.raises(ModelDirError, match="not found"):
        load_model_config(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="cosyvoice2.yaml"):
        load_model_config(tmp_path)
    d = tmp_path / "m"
    shutil.copytree(fixture_dir, d, ignore=shutil.ignore_patterns("*.pt"))
    (d / "CosyVoice-BlankEN" / "config.json").unlink()
    with pytest.raises(ModelDirError, match="config.json"):
        load_model_config(d)
    with pytest.raises(ModelDirError, match="llm.pt.*campplus.onnx"):
        check_complete(d)


def test_malformed_yaml_names_file_and_key(tmp_path, fixture_dir):
    d = tmp_path / "m"
    shutil.copytree(fixture_dir, d, ignore=shutil.ignore_patterns("*.pt"))
    y = d / "cosyvoice2.yaml"
    good = y.read_text()
    y.write_text(good + "\n  bad: [unclosed\n")
    with pytest.raises(ModelDirError, match="malformed YAML.*cosyvoice2.yaml"):
        load_model_config(d)
    y.write_text(good.replace("    hop_len: 4\n", ""))
    with pytest.raises(ModelDirError, match="`hift.istft_params.hop_len`"):
        load_model_config(d)
    y.write_text(good.replace("!ref <chunk_size> * <token_mel_ratio>", "!ref <no_such_key>"))
    with pytest.raises(ModelDirError, match="no_such_key"):
        load_model_config(d)
