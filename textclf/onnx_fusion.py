"""The int8 ONNX graph with its attention fused (ONNX Runtime's transformer optimizer).

torch's dynamo exporter (model.onnx) writes attention as the ops it decomposes into, which ONNX
Runtime's optimizer does not recognise. For model.int8.onnx the encoder is exported once more with
the TorchScript exporter and eager attention, fused by `onnxruntime.transformers.optimizer`
(Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu: ONNX Runtime's own ops) and
then quantised (QAttention, MatMulInteger). model.onnx stays the portable, unfused graph.

The fused fp32 graph is kept only where it fused attention and gives textclf's outputs on the
export's check rows (every length, with padding) within the export tolerance; anything else (a
decoder, an architecture the optimizer does not know, an exporter error) leaves the int8 graph
made from model.onnx, as before, and `fuse` says why. Measured in bench/predict_throughput.py.
"""

import contextlib
import io
import warnings

from .errors import first_line
from .hf_remote.modeling_textclf import is_causal

FUSED_OPS = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu")


def fuse(module, example, io_names, check, tolerance, path):
    """Write the fused fp32 graph of `module` (export.FoldMean, traced on `example`) to `path`.
    io_names: (input names, output names); check: ({width: feeds of the check rows cut to that
    width}, differs(outputs, width) -> the largest difference from textclf's on them): a trace that
    fixed the width would fail on the narrower rows. Returns (path, {"fused": {op: count}, "max_difference": d})
    or (None, {"fused": None, "reason": why})."""
    names, outputs = io_names
    feeds, differs = check
    try:
        stats = _export_and_fuse(module, example, names, outputs, path)
        if not stats.get("Attention"):
            raise ValueError("ONNX Runtime's optimizer fused no attention in this model")
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diff = max(differs(session.run(list(outputs), rows), width) for width, rows in feeds.items())
        if not diff <= tolerance:
            raise ValueError(f"the fused graph differs from textclf's outputs by {diff:.2e} (> {tolerance:g})")
    except Exception as err:  # noqa: BLE001 - any failure keeps the int8 graph made from model.onnx
        path.unlink(missing_ok=True)
        return None, {"fused": None, "reason": f"{type(err).__name__}: {first_line(err, 300)}"}
    return path, {"fused": stats, "max_difference": diff}


def _export_and_fuse(module, example, names, outputs, path):
    import torch
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    backbones = [member.backbone for member in module.members]
    config = backbones[0].config
    if is_causal(config) or not hasattr(backbones[0], "set_attn_implementation"):
        raise ValueError(f"{config.model_type} is not an encoder whose attention ONNX Runtime's optimizer fuses")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)  # 0: read from the graph
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    before = [b.config._attn_implementation for b in backbones]
    dynamic = {name: {0: "batch", 1: "length"} for name in names}
    dynamic.update({name: {1 if name.startswith("fold_") else 0: "batch"} for name in outputs})
    try:
        for backbone in backbones:  # the optimizer recognises eager attention's MatMul-Softmax-MatMul
            backbone.set_attn_implementation("eager")
        with _quiet():
            torch.onnx.export(module, example, str(path), input_names=list(names), output_names=list(outputs),
                              dynamic_axes=dynamic, dynamo=False, opset_version=17)
    finally:
        for backbone, impl in zip(backbones, before):
            backbone.set_attn_implementation(impl)
    options = FusionOptions("bert")
    # The embeddings' fusion names a mask it adds after its first node: with several folds' encoders
    # in one graph the names collide and the optimizer fails (onnxruntime 1.32). Their LayerNorm is
    # still fused (SkipLayerNormalization / LayerNormalization); attention reads attention_mask.
    options.enable_embed_layer_norm = len(backbones) == 1
    # attention reads attention_mask as given (0/1 per token), not as each row's count of leading
    # ones: a graph that a user feeds with left padding or gaps gets model.onnx's answers
    options.use_raw_attention_mask(True)
    with _quiet():
        optimized = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden,
                                   opt_level=1, optimization_options=options)
    optimized.save_model_to_file(str(path))
    stats = optimized.get_fused_operator_statistics()
    return {op: int(stats[op]) for op in FUSED_OPS if stats.get(op)}


@contextlib.contextmanager
def _quiet():
    """The exporter's and the optimizer's warnings and prints, silenced."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
