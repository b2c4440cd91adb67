"""LoRA adapters (model.lora, through peft): low-rank adapters trained on a frozen base model.

    check(model_cfg, encoder_config)   what LoRA cannot do here, tried on a weightless model first
    add(backbone, lora)                the backbone with adapters on its target modules
    saved_state(model, state)          what a checkpoint keeps: the adapters and the head
    base_record(model_dir)             where the base is and the hash of its weights (head.json)
    find_base(spec, folder)            the base a checkpoint's adapters go on, its hash checked
    merge(model, spec)                 adapters merged into the base: a plain classifier (export)

A LoRA checkpoint holds only the adapters and the head; the base's own weights are read from the
folder it was trained from (or premodels/<name>), and must hash as they did at training time.
`model.lora` (config.lora_settings) is checked with the model section's keys.
"""

import dataclasses
import hashlib
import warnings
from pathlib import Path

import torch

from .errors import UserError
from .fileio import sha256_file
from .premodels import resolve_model_dir


def check(model_cfg, encoder_config):
    """model.lora against this machine and the backbone, before anything is written: QLoRA needs
    CUDA, and the target modules must exist (tried on a weightless copy of the backbone)."""
    if model_cfg.lora.get("quantize") and not torch.cuda.is_available():
        raise UserError("model.lora.quantize=4bit (QLoRA) keeps the base in 4-bit with bitsandbytes, which needs a "
                        "CUDA GPU; on this machine drop quantize (plain LoRA trains on a CPU)")
    from transformers import AutoModel

    with torch.device("meta"):
        backbone = AutoModel.from_config(encoder_config, trust_remote_code=model_cfg.trust_remote_code)
        adapted = add(backbone, dict(model_cfg.lora, quantize=None))
    r = model_cfg.lora["r"]
    widths = {name: min(m.in_features, m.out_features) for name, m in adapted.named_modules()
              if hasattr(m, "lora_A") and isinstance(getattr(m, "in_features", None), int)}
    if widths and r > min(widths.values()):
        name = min(widths, key=widths.get)
        raise UserError(f"config key model.lora.r: {r} is more than the width of {name.split('.')[-1]} "
                        f"({widths[name]}), which an adapter's rank cannot exceed (a rank that high is no longer "
                        f"low-rank); use model.lora.r={min(widths[name], 8)} or another value of at most "
                        f"{widths[name]}")


def add(backbone, lora):
    """The backbone with LoRA adapters (peft) on its target modules; everything else frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("model.lora needs peft: pip install 'textclf[peft]' (or pip install peft)") from None
    if lora.get("quantize"):
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    conv1d = getattr(backbone.config, "model_type", "") == "gpt2"  # GPT-2's Conv1D stores weights transposed
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], bias="none", fan_in_fan_out=conv1d)
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 for a renamed attribute (is_gradient_checkpointing)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(backbone, config)
    except ValueError as err:  # target modules not found in this model
        raise UserError(f"model.lora.target_modules={lora['target_modules']!r} does not fit "
                        f"{type(backbone).__name__}: {str(err).splitlines()[0][:200]}") from None


def is_adapter_key(name):
    """What a LoRA checkpoint keeps: the adapters and everything outside the backbone (the head)."""
    return not name.startswith("backbone.") or "lora_" in name


def saved_state(model, state):
    """The tensors a checkpoint of `model` holds: all of them, or with LoRA the adapters and head."""
    if getattr(model, "lora", None):
        return {k: v for k, v in state.items() if is_adapter_key(k)}
    return state


_HASHES = {}  # (file, size, mtime) -> sha256: K fold checkpoints on one base hash it once per process


def weights_sha256(model_dir):
    """One hash over a model folder's weight files (safetensors or .bin), for a LoRA run's base."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise UserError(f"{model_dir} holds no weight files (.safetensors or .bin)")
    parts = []
    for p in files:
        stat = p.stat()
        key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = sha256_file(p)
        parts.append(f"{p.name}:{_HASHES[key]}\n")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def base_record(model_dir):
    """What head.json records of a LoRA run's base (model.Provenance): its folder and weights' hash."""
    return dict(base_dir=str(Path(model_dir).resolve()), base_sha256=weights_sha256(model_dir))


def find_base(spec, folder):
    """The base model of a LoRA checkpoint: where it was trained from, else the premodels/ folder of
    its name; its weights must hash as at training time."""
    candidates = [Path(spec.provenance.base_dir)] if spec.provenance.base_dir else []
    try:
        candidates.append(Path(resolve_model_dir(spec.provenance.model_name, "premodels")))
    except UserError:
        pass
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            if weights_sha256(candidate) != spec.provenance.base_sha256:
                raise UserError(f"{folder} holds LoRA adapters for base model {spec.provenance.model_name}, but the "
                                f"weights in {candidate} differ from the ones it was trained on (sha256); put the "
                                f"original base model back")
            return candidate
    raise UserError(f"{folder} holds LoRA adapters; their base model {spec.provenance.model_name} is not at "
                    f"{spec.provenance.base_dir} nor in premodels/; copy it there")


def merge(model, spec):
    """A LoRA classifier with its adapters merged into the base weights: a plain classifier (and its
    spec), as export writes it."""
    if not spec.head.lora:
        return model, spec
    model.backbone = model.backbone.merge_and_unload()
    model.lora = None
    return model, dataclasses.replace(spec, head=dataclasses.replace(spec.head, lora=None))
