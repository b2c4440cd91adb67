"""int8 prediction on the CPU: every Linear layer of the backbone with int8 weights (one scale per
output channel) and int8 activations quantised per batch (torch's dynamic quantisation, run by
oneDNN / fbgemm with VNNI where the CPU has it). The head stays in fp32, so the last step to the
probabilities is exact; LoRA adapters are merged into their base weights first.

Prediction only, on the CPU: a GPU has its own bf16 / fp16 paths. What it costs in accuracy is
measured, not assumed (bench/predict_throughput.py: SST-2 dev beside the fp32 and bf16 Predictor).
"""

import warnings

import torch

from . import lora
from .errors import UserError


def check(device):
    if torch.device(device).type != "cpu":
        raise UserError(f"precision=int8 runs on the CPU (dynamic int8 matmuls) and the device is {device}; use "
                        f"precision=auto (bf16 / fp16 on a GPU) or device='cpu'")


def quantize(model, spec):
    """The model (and its spec) with the backbone's Linear layers in dynamic int8; the head as it was."""
    model, spec = lora.merge(model, spec)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    layers = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith("backbone.")}
    with warnings.catch_warnings():  # torch marks its eager quantisation API as moving to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.float().eval(), layers, dtype=torch.qint8), spec

