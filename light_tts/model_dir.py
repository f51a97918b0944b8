"""Reads a released CosyVoice2 model directory into a typed ModelConfig, without importing upstream classes; the
HyperPyYAML reader and the section readers here serve every family's loader (models/cosyvoice3/config.py).

cosyvoice2.yaml is HyperPyYAML: `!new:` / `!name:` / `!apply:` tags name upstream classes and `!ref <key>`
expressions refer to other keys. We read the tags as data (tag name + arguments) and evaluate the `!ref`
expressions ourselves (key look-up and plain arithmetic only).
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from light_tts.errors import ModelDirError
from light_tts.model_config import (
    CFMConfig,
    EncoderConfig,
    EstimatorConfig,
    F0PredictorConfig,
    FlowConfig,
    FrontendConfig,
    HiFTConfig,
    LLMConfig,
    MelConfig,
    ModelConfig,
    QwenConfig,
    RASConfig,
    SpeechIds,
)

YAML_NAME = "cosyvoice2.yaml"
TOKENIZER_DIR = "CosyVoice-BlankEN"
CHECKPOINTS = ("llm.pt", "flow.pt", "hift.pt")
SPEECH_TOKENIZER = "speech_tokenizer_v2.onnx"
ONNX_FILES = ("campplus.onnx", SPEECH_TOKENIZER)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def safetensors_files(model_dir: Path, name: str = "model.safetensors") -> list[Path]:
    """The files of a Hugging Face checkpoint: `name`, or the shards its `.index.json` lists."""
    index = model_dir / f"{name}.index.json"
    if not index.is_file():
        return [model_dir / name]
    try:
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"malformed checkpoint index {index}: {e}") from e
    return [model_dir / file for file in files]


@dataclass(frozen=True)
class Tagged:
    """A `!new:`/`!name:`/`!apply:` node: which upstream object it names, and its arguments."""

    tag: str
    args: Any


@dataclass(frozen=True)
class Ref:
    """A `!ref` expression such as `<chunk_size> * <token_mel_ratio>`, resolved after loading."""

    expr: str


class _Loader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = loader.construct_scalar(node)
    return Tagged(suffix, args)


_Loader.add_multi_constructor("!new:", _construct_tagged)
_Loader.add_multi_constructor("!name:", _construct_tagged)
_Loader.add_multi_constructor("!apply:", _construct_tagged)
_Loader.add_constructor("!ref", lambda loader, node: Ref(loader.construct_scalar(node)))

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _eval_arith(node: ast.AST) -> Any:
    """Evaluates numbers, strings and + - * / // % ** on them; anything else is malformed."""
    if isinstance(node, ast.Expression):
        return _eval_arith(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval_arith(node.left), _eval_arith(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_arith(node.operand)
    raise ValueError(f"unsupported expression element {ast.dump(node)}")


def _lookup(root: dict, key: str) -> Any:
    value: Any = root
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _resolve(value: Any, root: dict, depth: int = 0) -> Any:
    if depth > 20:
        raise ValueError("!ref chain too deep (cycle?)")
    if isinstance(value, Ref):
        refs = re.findall(r"<([^<>]+)>", value.expr)
        if len(refs) == 1 and value.expr.strip() == f"<{refs[0]}>":
            return _resolve(_lookup(root, refs[0]), root, depth + 1)
        text = value.expr
        for key in refs:
            text = text.replace(f"<{key}>", repr(_resolve(_lookup(root, key), root, depth + 1)))
        return _eval_arith(ast.parse(text, mode="eval"))
    if isinstance(value, Tagged):
        return Tagged(value.tag, _resolve(value.args, root, depth))
    if isinstance(value, dict):
        return {k: _resolve(v, root, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, depth) for v in value]
    return value


def read_hyperpyyaml(path: Path) -> dict:
    """Parses a HyperPyYAML file into plain data with tags kept as `Tagged` and every `!ref` resolved."""
    if not path.is_file():
        raise ModelDirError(f"missing model file: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelDirError(f"malformed YAML in {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ModelDirError(f"malformed {path}: expected a mapping at the top level")
    try:
        return _resolve(raw, raw)
    except (KeyError, ValueError, SyntaxError, TypeError) as e:
        raise ModelDirError(f"malformed {path}: cannot resolve !ref ({e})") from e


class Section:
    """Reads typed fields from one mapping and names the file and key path when one is missing or wrong."""

    def __init__(self, data: Any, where: str, path: Path):
        if isinstance(data, Tagged):
            data = data.args
        if not isinstance(data, dict):
            raise ModelDirError(f"malformed {path}: `{where}` should be a mapping")
        self.data, self.where, self.path = data, where, path

    def sub(self, key: str) -> Section:
        return Section(self.get(key), self._name(key), self.path)

    def get(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ModelDirError(f"malformed {self.path}: missing `{self._name(key)}`")
            return default
        return self.data[key]

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fields(self, cls: type, **renames: str) -> dict:
        """Values for every field of dataclass `cls` present here (by its name or a renamed yaml key)."""
        out = {}
        for name, f in cls.__dataclass_fields__.items():
            key = renames.get(name, name)
            if key in self.data and not isinstance(self.data[key], (dict, Tagged)):
                value = self.data[key]
                if value is None:  # `null` in the yaml (e.g. CosyVoice3's fmax): the field's "none" meaning
                    out[name] = None
                    continue
                if isinstance(value, list):
                    value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
                try:
                    out[name] = type(f.default)(value) if isinstance(f.default, (int, float, bool, str)) else value
                except (TypeError, ValueError) as e:
                    raise ModelDirError(f"malformed {self.path}: `{self._name(key)}` = {value!r} ({e})") from e
        return out


def read_json(path: Path) -> dict:
    """A model directory's JSON object; a missing or malformed file names itself in the error."""
    if not path.is_file():
        raise ModelDirError(f"missing model file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"malformed JSON in {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelDirError(f"malformed {path}: expected an object")
    return data


def _read_qwen_config(path: Path) -> QwenConfig:
    data = read_json(path)
    rope = data.get("rope_parameters") or {}
    data.setdefault("rope_theta", rope.get("rope_theta", QwenConfig.rope_theta))
    sec = Section(data, "config", path)
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
    ):
        sec.get(key)
    return QwenConfig(**sec.fields(QwenConfig))


def open_yaml(model_dir: str | Path, yaml_name: str) -> tuple[Path, Section]:
    """(model_dir, the yaml's top section); ModelDirError for a missing directory or a malformed file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory not found: {model_dir}")
    yaml_path = model_dir / yaml_name
    return model_dir, Section(read_hyperpyyaml(yaml_path), "", yaml_path)


def read_llm(
    top: Section, model_dir: Path, ids: SpeechIds | None = None, prompt_end_text_id: int | None = None
) -> LLMConfig:
    """The `llm` section and CosyVoice-BlankEN/config.json; `ids`: the family's speech ids (default CosyVoice2's)."""
    llm = top.sub("llm")
    fields = llm.fields(LLMConfig)
    return LLMConfig(
        **fields,
        sampling=RASConfig(**llm.sub("sampling").fields(RASConfig)),
        qwen=_read_qwen_config(model_dir / TOKENIZER_DIR / "config.json"),
        ids=ids or SpeechIds.cosyvoice2(fields.get("speech_token_size", LLMConfig.speech_token_size)),
        prompt_end_text_id=prompt_end_text_id,
    )


def cfm_sections(flow: Section) -> tuple[Section, Section, Section]:
    """(decoder, its cfm_params, its estimator) of a flow section."""
    dec = flow.sub("decoder")
    cfm_params = dec.sub("cfm_params")
    if "content" in cfm_params.data:  # !new:omegaconf.DictConfig wraps its mapping in `content`
        cfm_params = cfm_params.sub("content")
    return dec, cfm_params, dec.sub("estimator")


def read_hift(top: Section, cls: type = HiFTConfig, f0_cls: type = F0PredictorConfig):
    """The `hift` section as `cls` (HiFTConfig or a subclass with more fields)."""
    hift = top.sub("hift")
    istft = hift.sub("istft_params")
    return cls(
        **hift.fields(cls),
        istft_n_fft=int(istft.get("n_fft")),
        istft_hop_len=int(istft.get("hop_len")),
        f0_predictor=f0_cls(**hift.sub("f0_predictor").fields(f0_cls)),
    )


def read_mel(top: Section) -> MelConfig:
    return MelConfig(**top.sub("feat_extractor").fields(MelConfig))


def read_frontend(top: Section, speech_tokenizer: str) -> FrontendConfig:
    """The speech tokenizer file (the family's) and the text tokenizer's version (`get_tokenizer.version`)."""
    version = (
        top.sub("get_tokenizer").get("version", FrontendConfig.tokenizer_version)
        if "get_tokenizer" in top.data
        else FrontendConfig.tokenizer_version
    )
    return FrontendConfig(speech_tokenizer=speech_tokenizer, tokenizer_version=str(version))


def load_model_config(model_dir: str | Path) -> ModelConfig:
    """Reads cosyvoice2.yaml and CosyVoice-BlankEN/config.json; errors name the file and the key."""
    model_dir, top = open_yaml(model_dir, YAML_NAME)
    flow = top.sub("flow")
    enc = flow.sub("encoder")
    dec, cfm_params, est = cfm_sections(flow)
    flow_cfg = FlowConfig(
        **flow.fields(FlowConfig),
        encoder=EncoderConfig(**enc.fields(EncoderConfig), pre_lookahead_len=flow.get("pre_lookahead_len", 3)),
        cfm=CFMConfig(
            **dec.fields(CFMConfig),
            **cfm_params.fields(CFMConfig),
            estimator=EstimatorConfig(**est.fields(EstimatorConfig)),
        ),
    )
    return ModelConfig(
        model_dir=model_dir,
        family="cosyvoice2",
        **top.fields(ModelConfig),
        llm=read_llm(top, model_dir),
        flow=flow_cfg,
        hift=read_hift(top),
        feat=read_mel(top),
        frontend=read_frontend(top, SPEECH_TOKENIZER),
    )


def check_complete(model_dir: str | Path, yaml_name: str = YAML_NAME, onnx_files: tuple[str, ...] = ONNX_FILES) -> None:
    """Raises ModelDirError listing every file a released model directory needs but lacks."""
    model_dir = Path(model_dir)
    needed = [
        yaml_name,
        *CHECKPOINTS,
        *onnx_files,
        *(f"{TOKENIZER_DIR}/{f}" for f in TOKENIZER_FILES),
        f"{TOKENIZER_DIR}/config.json",
    ]
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if missing:
        raise ModelDirError(f"incomplete model directory {model_dir}: missing {', '.join(missing)}")
