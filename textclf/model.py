"""The classifier: a Hugging Face encoder from premodels/ plus a small head.

Heads:
    cls     the first token's hidden state
    mean    the mean of the token states, padding masked out
    pooler  the backbone's pooler output (dense + tanh on the first token); models without
            one (DistilBERT, ELECTRA, DeBERTa) get the same layer here
    fusion  mean-pooled tokens through one linear layer plus the pooler output through
            another, summed (the competition topline's head)
Multi-sample dropout applies k dropout masks to the pooled features and averages the
logits; at evaluation dropout is off, so one pass is exact.
For regression the output layer predicts standardised targets, and the model returns them
in the targets' own units (z * std + mean, with the train split's mean and std): predictions
start at the mean whatever the units, and every consumer reads plain values.
"""

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from . import head_rows, lora
from .config import HEADS, TRUNCATIONS, WINDOW_AGGREGATES
from .errors import UserError
from .hf_remote.modeling_textclf import backbone_inputs, is_causal, mlp_layers, pool, uses_token_types
from .problem import NAMES as PROBLEM_NAMES, problem_type


class Classifier(nn.Module):
    """The backbone and the head a HeadConfig describes (with head.lora, the caller puts adapters
    on the backbone: build_classifier)."""

    def __init__(self, backbone, head_config):
        super().__init__()
        head, dropout, mlp_hidden = head_config.head, head_config.dropout, head_config.mlp_hidden
        self.backbone = backbone
        self.head = head
        self.lora = head_config.lora
        self.pass_token_types = uses_token_types(backbone.config)
        self.positions_from_mask = is_causal(backbone.config)
        hidden = backbone.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.samples = max(1, int(head_config.multi_sample_dropout))
        wants_pooler = head in ("pooler", "fusion")
        has_pooler = getattr(backbone, "pooler", None) is not None
        if not wants_pooler and has_pooler:
            # An unused pooler would leave parameters without gradients (DDP then fails).
            backbone.pooler = None
        self.pooler = None
        if wants_pooler and not has_pooler:
            self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.mlp = mlp_layers(hidden, mlp_hidden, dropout)
        self.fc = nn.Linear(mlp_hidden or hidden, head_config.n_outputs)
        self.fc_pooler = nn.Linear(hidden, head_config.n_outputs) if head == "fusion" else None
        # calibration: the logits are divided by the run's fitted temperature (1 while training)
        self.temperature = float(head_config.temperature)
        # regression: the affine map from standardised to real targets; fixed, so not in the state dict
        for name, values in (("target_mean", head_config.target_mean), ("target_std", head_config.target_std)):
            self.register_buffer(name, None if values is None else torch.tensor(values, dtype=torch.float32),
                                 persistent=False)

    def features(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = backbone_inputs(self, input_ids, attention_mask, token_type_ids)
        return pool(self.head, self.backbone(**kwargs), attention_mask, self.pooler)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        main, extra = self.features(input_ids, attention_mask, token_type_ids)
        samples = self.samples if self.training else 1
        logits = 0
        for _ in range(samples):
            features = self.dropout(main)
            step = self.fc(features if self.mlp is None else self.mlp(features))
            if extra is not None:
                step = step + self.fc_pooler(self.dropout(extra))
            logits = logits + step
        logits = logits / samples
        if self.target_std is not None:
            logits = logits * self.target_std + self.target_mean
        elif self.temperature != 1.0:
            logits = logits / self.temperature
        return logits


# ---------------------------------------------------------------------------- layers of a backbone


# encoder.layer.N (BERT, RoBERTa, DeBERTa, ELECTRA), transformer.layer.N (DistilBERT), layers.N (Llama,
# Mistral, Qwen, Gemma), h.N (GPT-2), blocks.N / block.N (others)
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block)\.(\d+)\.")
_EMBEDDINGS = ("embed_tokens", "wte", "wpe", "embed_positions", "shared")


def layer_index(name):
    """Which layer of the backbone a parameter name belongs to: its number counted from the input,
    -1 for the embeddings, None for what sits above the layers (final norm, pooler)."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1))
    parts = name.split(".")
    if any("embeddings" in part for part in parts) or any(part in _EMBEDDINGS for part in parts):
        return -1
    return None


def num_layers(model):
    """The number of layers in the backbone, counted from its parameter names."""
    indices = [layer_index(name) for name, _ in model.backbone.named_parameters()]
    return 1 + max((i for i in indices if i is not None), default=-1)


def check_freeze(model_dir, embeddings, layers, trust_remote_code=False):
    """Refuse model.freeze_layers / freeze_embeddings that do not fit the backbone, before anything is
    written. The layers are counted from parameter names, as freeze() counts them, on a backbone
    built on the meta device (no memory, no weights read)."""
    if not embeddings and not layers:
        return
    from transformers import AutoConfig, AutoModel

    from .premodels import quiet_transformers

    quiet_transformers()
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    indices = [layer_index(name) for name, _ in backbone.named_parameters()]
    total = 1 + max((i for i in indices if i is not None), default=-1)
    if layers > total:
        raise UserError(f"model.freeze_layers={layers}, but the backbone has {total} layers; use 0..{total}")
    if -1 not in indices:
        raise UserError("model.freeze_embeddings / freeze_layers: no embedding parameters found by name in this "
                        "backbone, so nothing would be frozen; leave them off for this model")


def check_gradient_checkpointing(model_dir, trust_remote_code=False):
    """Refuse train.gradient_checkpointing for a backbone class that cannot recompute its layers."""
    from transformers import AutoModel

    from .premodels import quiet_transformers

    quiet_transformers()
    config = read_encoder_config(model_dir, trust_remote_code)
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise UserError(f"train.gradient_checkpointing: {type(backbone).__name__} does not support gradient "
                        f"checkpointing; set it to false (or lower train.batch_size / data.max_len to save memory)")


def freeze(model, embeddings=False, layers=0):
    """Stop training the embeddings (and, with layers = k > 0, the first k layers with them): their
    weights stay as loaded, and backward stops above them, which saves its cost there. Returns the
    number of parameters frozen. The range of `layers` is checked before training (check_freeze)."""
    frozen = 0
    for name, param in model.backbone.named_parameters():
        index = layer_index(name)
        if index is not None and ((embeddings or layers > 0) and index == -1 or 0 <= index < layers):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


# ---------------------------------------------------------------------------- building / loading


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def read_encoder_config(model_dir, trust_remote_code=False):
    """The encoder's config: config.json of a premodels/ folder, or the `encoder` block of a textclf
    folder's config.json (best/ and exported folders)."""
    from transformers import AutoConfig

    path = Path(model_dir) / "config.json"
    if path.is_file():
        from .fileio import load_json

        doc = load_json(path, "a model config.json", "restore the file from the model's source")
        if doc.get("model_type") == "textclf":
            encoder = dict(doc.get("encoder") or {})
            return AutoConfig.for_model(encoder.pop("model_type", ""), **encoder)
    return AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def resolve_head(requested, config):
    """model.head against the backbone: auto is cls for encoders and last for decoders; a head that
    reads the first token is refused on a decoder, where that token has seen nothing else."""
    causal = is_causal(config)
    if requested == "auto":
        return "last" if causal else "cls"
    if causal and requested in ("cls", "pooler", "fusion"):
        raise UserError(f"model.head={requested} reads the first token, and in a causal model ({config.model_type}) "
                        f"that token has seen only itself, so the classifier would be at chance; use model.head=last "
                        f"(the default for decoders) or mean")
    return requested


def load_backbone(model_dir, trust_remote_code=False, from_config_only=False, backbone_dropout=None, quantize=None):
    from transformers import AutoModel

    from .premodels import quiet_transformers

    quiet_transformers()
    try:
        config = read_encoder_config(model_dir, trust_remote_code)
        if backbone_dropout is not None:
            for key in DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, backbone_dropout)
        if from_config_only:
            return AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        kwargs = {}
        if quantize == "4bit":  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), bf16 compute
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                               bnb_4bit_use_double_quant=True,
                                                               bnb_4bit_compute_dtype=torch.bfloat16)
        # dtype float32: transformers 5 defaults to the checkpoint's dtype; autocast handles precision
        backbone, info = AutoModel.from_pretrained(str(model_dir), config=config, dtype=torch.float32,
                                                   trust_remote_code=trust_remote_code, output_loading_info=True,
                                                   **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the model in {model_dir}: {str(err).splitlines()[0]}") from None
    except RuntimeError as err:  # a tensor of another size (pickled weights are not checked before)
        if "size" not in str(err) and "mismatch" not in str(err):
            raise
        raise UserError(f"the weights in {model_dir} do not fit its config.json (a tensor of another shape): the "
                        f"config and weights come from different models; copy the complete Hugging Face folder there "
                        f"again") from None
    check_loaded(backbone, info, model_dir)
    return backbone


def check_loaded(backbone, info, model_dir):
    """What the loaded weights must be, whatever their file format: every tensor the backbone needs
    (a pooler may start new), and finite."""
    missing = [k for k in info.get("missing_keys") or () if not k.split(".")[0] == "pooler"]
    if missing:
        raise UserError(f"the weights in {model_dir} lack {len(missing)} tensor(s) the model needs (e.g. "
                        f"{sorted(missing)[0]}), which would start random; copy the complete Hugging Face folder "
                        f"there again")
    for name, param in backbone.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise UserError(f"the weights in {model_dir} hold NaN or inf ({name}); the model cannot train from them: "
                            f"copy the complete Hugging Face folder there again")


# ---------------------------------------------------------------------------- what a trained model is


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The head on the backbone: the architecture settings a checkpoint is rebuilt from."""

    head: str = "cls"  # cls | mean | pooler | fusion
    n_outputs: int = 2
    dropout: float = 0.1
    backbone_dropout: float | None = None  # overrides the backbone config's dropout when set
    multi_sample_dropout: int = 1
    mlp_hidden: int = 0  # > 0: Linear(hidden, mlp_hidden)-ReLU-Dropout before the output layer
    target_mean: list | None = None  # regression: the train targets' mean and std per target; the output
    target_std: list | None = None  # layer predicts (y - mean) / std, the model returns y
    lora: dict | None = None  # model.lora with its defaults filled in: adapters on a frozen base (peft)
    verbalizer: list | None = None  # model.verbalizer's label words and their token ids: the output layer
    verbalizer_ids: list | None = None  # starts as the LM head's rows for them (next-token logits of the words)
    temperature: float = 1.0  # the logits are divided by it: fitted on the run's out-of-fold rows (calibration.py)


@dataclasses.dataclass(frozen=True)
class Labels:
    names: list  # class names; the target names for regression
    problem_type: str  # single_label | binary_bce | multi_label | regression

    @property
    def problem(self):
        """The problem type as a problem.Problem (what the outputs mean, how they are decided)."""
        return problem_type(self.problem_type)


@dataclasses.dataclass(frozen=True)
class Tokenization:
    """How raw texts become the model's input, exactly as data_process.py did it."""

    max_len: int
    truncation: str
    head_tokens: int | None
    text_columns: list
    text_pair_column: str | None
    vocab_sha256: str
    window_stride: int = 0  # > 0: texts are read as sliding windows (data.window_stride) ...
    max_windows: int = 0
    window_aggregate: str = "mean"  # ... whose probabilities are aggregated per text
    template: str | None = None  # data.template: the text made from several columns
    template_truncate: str | None = None  # the template field a too-long row is cut in first (None: the longest)


def window_keys(windows):
    """Tokenization's window fields from meta.json's "windows" entry (None: no windows)."""
    if not windows:
        return {}
    return dict(window_stride=windows["stride"], max_windows=windows["max_windows"],
                window_aggregate=windows["aggregate"])


@dataclasses.dataclass(frozen=True)
class Provenance:
    data_name: str
    data_meta_sha256: str
    model_name: str
    base_dir: str = ""  # LoRA: the base model the adapters go on (best/ holds only adapters and head) ...
    base_sha256: str = ""  # ... and the hash of its weights, checked when the adapters are loaded


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything besides the weights that a trained classifier needs: written as head.json in
    each best/ folder, one block per concern."""

    head: HeadConfig
    labels: Labels
    tokenization: Tokenization
    provenance: Provenance

    FORMAT = 2

    @classmethod
    def for_data(cls, head, meta, meta_sha256, model_name, problem_type, **base):
        """The spec of a model trained on data_process output `meta` (`base`: a LoRA run's base_dir
        and base_sha256)."""
        return cls(head, Labels(list(meta["label_names"]), problem_type),
                   Tokenization(meta["max_len"], meta["truncation"], meta["head_tokens"], list(meta["text_columns"]),
                                meta["text_pair_column"], meta["tokenizer"]["vocab_sha256"],
                                **window_keys(meta.get("windows")), template=meta.get("template"),
                                template_truncate=meta.get("template_truncate")),
                   Provenance(meta["name"], meta_sha256, model_name, **base))

    def to_json(self):
        return {"format": self.FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, doc, where):
        """Read head.json (format 2, or the flat format 1 of earlier versions)."""
        try:
            if doc.get("format") != cls.FORMAT:  # format 1: one flat dict
                doc = {"head": {f.name: doc[f.name] for f in dataclasses.fields(HeadConfig) if f.name in doc},
                       "labels": {"names": doc["label_names"], "problem_type": doc["problem_type"]},
                       "tokenization": {f.name: doc.get(f.name) for f in dataclasses.fields(Tokenization)},
                       "provenance": {f.name: doc.get(f.name, "") for f in dataclasses.fields(Provenance)}}
            spec = cls(HeadConfig(**doc["head"]), Labels(**doc["labels"]), Tokenization(**doc["tokenization"]),
                       Provenance(**doc["provenance"]))
            head, labels, tokens = spec.head, spec.labels, spec.tokenization
            checks = {"head.head": head.head in HEADS,
                      "head.n_outputs": isinstance(head.n_outputs, int) and head.n_outputs >= 1,
                      "head.mlp_hidden": isinstance(head.mlp_hidden, int) and head.mlp_hidden >= 0,
                      "head.temperature": isinstance(head.temperature, (int, float)) and not isinstance(
                          head.temperature, bool) and math.isfinite(head.temperature) and head.temperature > 0,
                      "head.lora": head.lora is None or (isinstance(head.lora, dict) and "r" in head.lora),
                      "head.verbalizer_ids": head.verbalizer_ids is None or (isinstance(head.verbalizer_ids, list) and
                                                                             len(head.verbalizer_ids) == head.n_outputs),
                      "labels.names": isinstance(labels.names, list) and all(isinstance(n, str) for n in labels.names),
                      "labels.problem_type": labels.problem_type in PROBLEM_NAMES,
                      "head.target_std": labels.problem_type != "regression" or (
                          isinstance(head.target_std, list) and isinstance(head.target_mean, list)
                          and len(head.target_std) == len(head.target_mean) == head.n_outputs
                          and all(isinstance(v, (int, float)) and v > 0 for v in head.target_std)),
                      "tokenization.max_len": isinstance(tokens.max_len, int) and tokens.max_len > 0,
                      "tokenization.truncation": tokens.truncation in TRUNCATIONS,
                      "tokenization.window_stride": isinstance(tokens.window_stride, int) and tokens.window_stride >= 0
                      and isinstance(tokens.max_windows, int) and tokens.max_windows >= 0,
                      "tokenization.window_aggregate": tokens.window_aggregate in WINDOW_AGGREGATES}
            wrong = [k for k, ok in checks.items() if not ok]
            if wrong:
                raise TypeError(f"bad {', '.join(wrong)}")
            return spec
        except (AttributeError, KeyError, TypeError) as err:
            raise UserError(f"{where} is not a textclf head.json ({type(err).__name__}: {err}); retrain this fold or "
                            f"restore the file") from None


def build_classifier(model_dir, head, trust_remote_code=False, from_config_only=False):
    """A Classifier: the backbone in `model_dir` (weights, or its config only) and a new head; with
    head.lora, LoRA adapters on the backbone, whose own weights are frozen."""
    quantize = (head.lora or {}).get("quantize")
    backbone = load_backbone(model_dir, trust_remote_code, from_config_only, head.backbone_dropout, quantize)
    model = Classifier(backbone, head)
    if head.lora:  # after the Classifier removed an unused pooler, so no adapter sits on it
        model.backbone = lora.add(model.backbone, head.lora)
    head_rows.apply(model)  # a cls / pooler head: the last layer computes the first row only
    return model


# ---------------------------------------------------------------------------- the verbalizer (decoders)


def verbalizer_ids(words, tokenizer, label_names, problem, config, head):
    """model.verbalizer checked against the model and tokenizer: each label word one token of the
    vocabulary (as it would follow the prompt); returns their token ids."""
    if not is_causal(config):
        raise UserError(f"model.verbalizer scores label words with a decoder's LM head, and {config.model_type} is "
                        f"not a causal language model; drop model.verbalizer (the usual head trains instead)")
    if problem.outputs(len(label_names)) != len(label_names) or problem.regression:
        raise UserError(f"model.verbalizer gives one score per label word, and model.problem_type={problem.name} "
                        f"needs {'numbers' if problem.regression else 'one output'}; "
                        + ("a verbalizer picks among class labels, not numbers: drop model.verbalizer (a regression "
                           "head predicts the targets)" if problem.regression else
                           "use model.problem_type=single_label"))
    if head.head != "last" or head.mlp_hidden:
        raise UserError("model.verbalizer reads the LM head at the last token: use model.head=last (or auto) and no "
                        "model.mlp_hidden")
    if len(words) != len(label_names):
        raise UserError(f"model.verbalizer has {len(words)} words for {len(label_names)} labels "
                        f"({', '.join(label_names)}); give one word per label, in that order")
    ids = []
    for word, label in zip(words, label_names):
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise UserError(f"model.verbalizer word {word!r} (label {label}) is {len(pieces)} tokens "
                            f"{tokenizer.convert_ids_to_tokens(pieces)}; each word must be one token of the "
                            f"vocabulary (try a shorter word, or one with a leading space)")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise UserError(f"model.verbalizer words {words} share a token; give each label its own word")
    return ids


_LM_ROWS = {}  # (model_dir, ids) -> the LM head's rows: every fold starts from them, the LM loads once


def init_verbalizer(model, model_dir, ids, trust_remote_code=False):
    """Set the output layer to the LM head's rows for the label words, so the classifier's logits
    are the decoder's next-token logits of those words (at the last token, after the final norm)."""
    key = (str(Path(model_dir).resolve()), tuple(ids))
    if key not in _LM_ROWS:
        from transformers import AutoModelForCausalLM

        causal = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                      trust_remote_code=trust_remote_code)
        lm_head = causal.get_output_embeddings()
        bias = getattr(lm_head, "bias", None)
        _LM_ROWS[key] = (lm_head.weight[ids].detach().clone(), None if bias is None else bias[ids].detach().clone())
        del causal
    weight, bias = _LM_ROWS[key]
    with torch.no_grad():
        model.fc.weight.copy_(weight)
        if bias is not None:
            model.fc.bias.copy_(bias)
        else:
            model.fc.bias.zero_()


def load_into(model, state, where):
    """Load a checkpoint's tensors: every one (strict), or with LoRA the adapters and head, the
    base weights already in place."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if getattr(model, "lora", None):
        missing = [k for k in missing if lora.is_adapter_key(k)]
    if missing or unexpected:
        raise UserError(f"weights in {where} do not fit the model (missing {len(missing)}, unexpected "
                        f"{len(unexpected)} tensors, e.g. {(missing or unexpected)[0]}); the checkpoint and its "
                        f"config differ")


# ---------------------------------------------------------------------------- saving and loading


REMOTE_CODE = ("configuration_textclf.py", "modeling_textclf.py")


def hf_config(encoder_config, spec, members=1):
    """config.json of a textclf folder, which Hugging Face's AutoModelForSequenceClassification loads
    with trust_remote_code=True (the model class is in the folder's modeling_textclf.py): the
    encoder's config as a block, the head, the labels and the problem type."""
    from .hf_remote.configuration_textclf import TextclfConfig

    names = list(spec.labels.names)
    # Hugging Face's names; regression: num_labels = the number of targets, logits = the predictions
    problem_type = {"multi_label": "multi_label_classification", "regression": "regression"}.get(
        spec.labels.problem_type, "single_label_classification")
    config = TextclfConfig(encoder=encoder_config.to_dict(), head=spec.head.head, n_outputs=spec.head.n_outputs,
                           mlp_hidden=spec.head.mlp_hidden, target_mean=spec.head.target_mean,
                           calibration_temperature=spec.head.temperature,
                           target_std=spec.head.target_std,
                           textclf_problem_type=spec.labels.problem_type, members=members,
                           id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
                           problem_type=problem_type)
    config.auto_map = {"AutoConfig": "configuration_textclf.TextclfConfig",
                       "AutoModelForSequenceClassification": "modeling_textclf.TextclfForSequenceClassification"}
    config.architectures = ["TextclfForSequenceClassification"]
    return config


def write_hf_config(folder, encoder_config, spec, members=1):
    """config.json and the two remote-code files beside it."""
    import shutil

    hf_config(encoder_config, spec, members).save_pretrained(str(folder))
    for name in REMOTE_CODE:
        shutil.copyfile(Path(__file__).parent / "hf_remote" / name, Path(folder) / name)


def save_classifier(model, folder, spec, tokenizer=None, state_dict=None):
    """Write weights (safetensors), config.json with the encoder's config and the labels (a folder
    that transformers loads with trust_remote_code=True, and refuses without it), head.json (the
    ModelSpec) and the tokenizer. `state_dict` is the full state gathered by
    accelerator.get_state_dict under FSDP/DeepSpeed."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = lora.saved_state(model, state_dict if state_dict is not None else model.state_dict())
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_hf_config(folder, model.backbone.config, spec)
    with open(folder / "head.json", "w", encoding="utf-8") as fh:
        json.dump(spec.to_json(), fh, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def load_classifier(folder, trust_remote_code=False, calibrated=True):
    """Rebuild a classifier from a `best/` folder written by save_classifier: (model, ModelSpec).
    calibrated=False: the logits as trained, without the run's fitted temperature."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    head_path = folder / "head.json"
    if not head_path.is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder} is not a textclf checkpoint (head.json or model.safetensors missing); "
                        f"point at checkpoints/<run>/fold<k>/best")
    from .fileio import load_json

    spec = ModelSpec.from_json(load_json(head_path, "a textclf head.json", "retrain this fold or restore the file"),
                               head_path)
    if spec.head.lora:  # adapters and head only: the base model's weights come from its own folder
        model = build_classifier(lora.find_base(spec, folder), spec.head, trust_remote_code)
    else:
        model = build_classifier(folder, spec.head, trust_remote_code, from_config_only=True)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"weights in {folder / 'model.safetensors'} are corrupted or truncated ({err}); "
                        f"retrain this fold or restore the file") from None
    load_into(model, state, folder)
    if not calibrated:
        model.temperature = 1.0
    return model, spec
