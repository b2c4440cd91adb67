"""A textclf classifier as a Hugging Face model (copied beside its weights).

The parameter names are textclf's own (`backbone.*`, `fc.*`, ...), so one safetensors file
serves textclf and transformers alike. `pool` is the head textclf trains with.
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_textclf import TextclfConfig


def uses_token_types(config):
    """DistilBERT ignores token_type_ids and RoBERTa/DeBERTa have one type: pass them only when used."""
    return getattr(config, "type_vocab_size", 0) >= 2 and config.model_type != "distilbert"


def is_causal(config):
    """A decoder whose tokens see only what comes before them (Llama, Mistral, Qwen, Gemma, GPT-2):
    a causal-LM family that is not also a masked-LM (encoder) family."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    kind = getattr(config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def backbone_inputs(owner, input_ids, attention_mask, token_type_ids=None):
    """The backbone's keyword arguments. Decoders get positions counted from the mask, so a
    left-padded row reads like the same row unpadded (models with absolute positions, GPT-2,
    would otherwise shift)."""
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if owner.pass_token_types and token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    if getattr(owner, "positions_from_mask", False):
        kwargs["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    return kwargs


def pool(head, out, attention_mask, pooler=None):
    """The head's features from the encoder output: (main, extra); extra only for fusion. `last`
    (decoders) takes the last unpadded token.
    `pooler` replaces the encoder's own pooler where the encoder has none."""
    hidden = out.last_hidden_state
    mean = pooled = None
    if head in ("mean", "fusion"):
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if head in ("pooler", "fusion"):
        pooled = pooler(hidden[:, 0]) if pooler is not None else out.pooler_output
    if head == "cls":
        return hidden[:, 0], None
    if head == "last":  # the last token the mask keeps: a causal model's only token that has seen the whole text
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_positions(attention_mask)], None
    if head == "mean":
        return mean, None
    if head == "pooler":
        return pooled, None
    return mean, pooled


def last_positions(attention_mask):
    """Each row's last position with mask 1, for right padding (the row's length - 1) and left
    padding (the last column) alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).to(torch.long).argmax(1)


def mlp_layers(hidden, width, dropout):
    """The MLP head's hidden layer (Linear-ReLU-Dropout; the output Linear follows), or None."""
    if not width:
        return None
    return nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Dropout(dropout))


def encoder_config(config):
    encoder = dict(config.encoder)
    return AutoConfig.for_model(encoder.pop("model_type"), **encoder)


def build(owner, config):
    """Give `owner` one classifier's modules: the encoder, the pooler where the head needs one the
    encoder lacks, and the output layer(s)."""
    owner.backbone = AutoModel.from_config(encoder_config(config))
    owner.head = config.head
    owner.pass_token_types = uses_token_types(owner.backbone.config)
    owner.positions_from_mask = is_causal(owner.backbone.config)
    hidden = owner.backbone.config.hidden_size
    wants_pooler = config.head in ("pooler", "fusion")
    has_pooler = getattr(owner.backbone, "pooler", None) is not None
    if not wants_pooler and has_pooler:
        owner.backbone.pooler = None
    owner.pooler = None
    if wants_pooler and not has_pooler:
        owner.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
    width = getattr(config, "mlp_hidden", 0)
    owner.mlp = mlp_layers(hidden, width, 0.0)
    owner.fc = nn.Linear(width or hidden, config.n_outputs)
    owner.fc_pooler = nn.Linear(hidden, config.n_outputs) if config.head == "fusion" else None
    # regression: lists, not buffers, so that loading never has to initialise them
    owner.target_mean = getattr(config, "target_mean", None)
    owner.target_std = getattr(config, "target_std", None)
    owner.temperature = float(getattr(config, "calibration_temperature", 1.0) or 1.0)  # calibration: logits / T


def classify(owner, input_ids, attention_mask, token_type_ids=None):
    """The raw outputs of one classifier built by `build` (dropout is off at evaluation)."""
    kwargs = backbone_inputs(owner, input_ids, attention_mask, token_type_ids)
    main, extra = pool(owner.head, owner.backbone(**kwargs), attention_mask, owner.pooler)
    logits = owner.fc(main if owner.mlp is None else owner.mlp(main))
    if extra is not None:
        logits = logits + owner.fc_pooler(extra)
    if owner.target_std is not None:  # regression: standardised outputs back to the targets' units
        logits = (logits * torch.tensor(owner.target_std, dtype=torch.float32, device=logits.device)
                  + torch.tensor(owner.target_mean, dtype=torch.float32, device=logits.device))
    elif owner.temperature != 1.0:
        logits = logits / owner.temperature
    return logits


class Member(nn.Module):
    """One fold's classifier inside a fold-mean model."""

    def __init__(self, config):
        super().__init__()
        build(self, config)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return classify(self, input_ids, attention_mask, token_type_ids)


class TextclfForSequenceClassification(PreTrainedModel):
    """Logits in Hugging Face's convention: softmax of them gives the class probabilities
    (single_label; binary_bce's one logit z becomes [0, z]), sigmoid gives them for multi_label,
    and for regression (problem_type "regression") they are the predictions themselves.
    With members > 1 the output is the fold mean, as logits whose softmax (or sigmoid) is the
    mean of the members' probabilities (regression: the mean of the members' predictions)."""

    config_class = TextclfConfig
    base_model_prefix = "textclf"
    _no_split_modules = []

    def __init__(self, config):
        super().__init__(config)
        if config.members == 1:
            build(self, config)
        else:
            self.members = nn.ModuleList(Member(config) for _ in range(config.members))
        self.post_init()

    def _probs(self, logits):
        if self.config.textclf_problem_type == "regression":
            return logits.float()
        if self.config.textclf_problem_type == "single_label":
            return logits.float().softmax(-1)
        if self.config.textclf_problem_type == "binary_bce":
            p = logits.float().squeeze(-1).sigmoid()
            return torch.stack([1 - p, p], dim=-1)
        return logits.float().sigmoid()

    def _to_logits(self, raw):
        if self.config.textclf_problem_type == "binary_bce":
            return torch.cat([torch.zeros_like(raw), raw], dim=-1)
        return raw

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.members == 1:
            logits = self._to_logits(classify(self, input_ids, attention_mask, token_type_ids))
        else:
            probs = torch.stack([self._probs(m(input_ids, attention_mask, token_type_ids)) for m in self.members])
            if self.config.textclf_problem_type == "regression":
                logits = probs.mean(0)
            else:
                probs = probs.mean(0).clamp(1e-12, 1 - 1e-7)
                # softmax(log p) = p when p sums to 1; sigmoid(log p - log(1 - p)) = p
                multi = self.config.textclf_problem_type == "multi_label"
                logits = probs.log() - (1 - probs).log() if multi else probs.log()
        loss = None
        if labels is not None:
            if self.config.textclf_problem_type == "regression":
                loss = nn.functional.mse_loss(logits.float(), labels.float().view(logits.shape))
            elif self.config.textclf_problem_type == "multi_label":
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
