"""The model card every export carries: README.md, with the metadata a model hub reads.

What it says comes from the run's own records, never from memory: labels and problem type
(run.json), metrics on the out-of-fold rows and the labelled test split (summary.json), the
training config (config.yaml), the data's fingerprint (meta.json: each split's source, rows and
sha256), the precision it trained in, the calibration temperature, and the notes on how the run
read its texts. `upload` pushes an export folder to the hub for users who are online.
"""

import dataclasses
import json
from pathlib import Path

import yaml

from .checkpoint import load_run_json
from .errors import UserError, first_line

INTENDED_USE = ("Text classification of texts like the training data below: the same language, domain and "
                "length, the labels listed. It was not evaluated on anything else; check it on your own rows "
                "before relying on it, and keep a person in the loop where a wrong label costs much.")


def _metrics_table(summary):
    rows = [(split, name, value) for split in ("oof", "test")
            for name, value in sorted((summary.get(split) or {}).items()) if isinstance(value, float)]  # not counts
    if not rows:
        return "No labelled rows were scored (no out-of-fold rows or labelled test split).\n"
    words = {"oof": "out-of-fold (validation)", "test": "test"}
    lines = ["The whole run's (every fold's out-of-fold rows; the test split by the fold mean).", "",
             "| rows | metric | value |", "|---|---|---|"]
    lines += [f"| {words[split]} | {name} | {value:.4f} |" for split, name, value in rows]
    return "\n".join(lines) + "\n"


def _data_lines(meta, run):
    if meta is None:
        return [f"The run's data folder ({run.get('data_dir')}) is gone; its meta.json sha256 was "
                f"`{run.get('data_meta_sha256')}`."]
    lines = [f"Data set `{meta.get('name')}` (meta.json sha256 `{run.get('data_meta_sha256')}`), max_len "
             f"{meta.get('max_len')}, truncation {meta.get('truncation')}:", ""]
    lines += ["| split | source | rows | sha256 |", "|---|---|---|---|"]
    for split, entry in (meta.get("splits") or {}).items():
        lines.append(f"| {split} | `{Path(str(entry.get('source_file', ''))).name}` | {entry.get('rows')} | "
                     f"`{str(entry.get('source_sha256', ''))[:16]}` |")
    return lines


LOCAL_KEYS = ("output_dir", "premodels_dir", "resume", "teacher")  # this machine's folders: not for a shared card


def shareable(config):
    """The run's model and train sections without this machine's paths (the model by its folder name)."""
    keep = {section: {k: v for k, v in (config.get(section) or {}).items() if k not in LOCAL_KEYS}
            for section in ("model", "train") if section in config}
    if isinstance(keep.get("model", {}).get("name"), str):
        keep["model"]["name"] = Path(keep["model"]["name"]).name
    return keep


@dataclasses.dataclass
class Records:
    """What a card says about a run, read once for every folder of an export."""

    run_dir: Path
    run: dict  # run.json
    summary: dict  # summary.json ({} before the run finished)
    meta: dict | None  # the data's meta.json (None: the data folder is gone)
    trained: dict  # config.yaml


def read_records(run_dir):
    run_dir = Path(run_dir)
    run = load_run_json(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")) \
        if (run_dir / "summary.json").is_file() else {}
    meta_path = Path(str(run.get("data_dir", ""))) / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
    config = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    return Records(run_dir, run, summary, meta, yaml.safe_load(config) or {} if config else {})


def card(records, report, spec, weights_precision="float32"):
    """The README.md text of one folder of an export (report: export.json's content so far, with the
    folder's entry)."""
    run_dir, run, summary, meta = records.run_dir, records.run, records.summary, records.meta
    keep = shareable(records.trained)
    labels = list(run.get("label_names") or spec.labels.names)
    precision = (run.get("precision") or {}).get("precision", "unknown")
    precision = {"no": "fp32", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision"}.get(precision, precision)
    device = (run.get("precision") or {}).get("device") or {}
    temperature = (summary.get("calibration") or {}).get("temperature")
    front = {"library_name": "transformers" if report["format"] == "hf" else "onnx",
             "pipeline_tag": "text-classification", "tags": ["textclf", "text-classification"]}
    load = ("```python\nfrom transformers import pipeline\nclassify = pipeline(\"text-classification\", "
            "model=\"<this folder>\"" + (", trust_remote_code=True" if "trust_remote_code" in str(report.get("class"))
                                          else "") + ")\n```"
            if report["format"] == "hf" else
            "```python\nfrom textclf.onnx_predict import OnnxPredictor\npredictor = OnnxPredictor(\"<this folder>\")\n"
            "predictor.predict([\"a text to classify\"])\n```")
    parts = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {run_dir.name}", "",
        f"A {spec.labels.problem_type.replace('_', '-')} text classifier fine-tuned with textclf from "
        f"`{Path(str(run.get('model_dir', ''))).name}`, exported as {report['format']} "
        f"(fold {report['fold']}).", "",
        "## Labels", "", ", ".join(f"`{name}`" for name in labels) + f" ({len(labels)})", "",
        "## Metrics", "", _metrics_table(summary),
        "## Intended use", "", INTENDED_USE, "",
        *(["## How it reads texts", "", *[f"- {note}" for note in report.get("notes", [])], ""]
          if report.get("notes") else []),
        "## Precision", "",
        f"Trained in {precision} on {device.get('name', 'an unknown device')} "
        f"({device.get('capability', device.get('type', ''))}); exported weights are {weights_precision}"
        + (", with a dynamically quantised int8 graph beside them" if report.get("int8") else "") + "."
        + (f" Probabilities are calibrated by the temperature {temperature:g} fitted on the out-of-fold rows."
           if isinstance(temperature, (int, float)) and temperature != 1.0 else ""), "",
        "## Training data", "", *_data_lines(meta, run), "",
        "## Training config", "", "```yaml", yaml.safe_dump(keep, sort_keys=False).strip(), "```", "",
        "## Use", "", load, "",
        "## Checkpoints", "",
        *[f"- fold {c['fold']}: `model.safetensors` sha256 `{c['sha256'][:16]}`"
          for c in report.get("checkpoints", [])],
        "",
    ]
    return "\n".join(parts)


def check_push(repo):
    """Before anything is written: the hub is reachable and the repo name is one; else one line."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise UserError("--push-to-hub needs huggingface_hub, which is not installed; pip install huggingface_hub"
                        ) from None
    if not isinstance(repo, str) or repo.count("/") > 1 or not repo.strip("/") or " " in repo:
        raise UserError(f"--push-to-hub {repo!r}: name a hub repository, e.g. my-team/sst2-minilm")
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"--push-to-hub {repo}: the hub cannot be reached (HF_HUB_OFFLINE=1); export without "
                        f"--push-to-hub and upload the folder from a machine that is online")
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
    except Exception as err:
        raise UserError(f"--push-to-hub {repo}: the repository could not be created or reached "
                        f"({type(err).__name__}: {first_line(err, 160)}); check "
                        f"the network and `hf auth login`, or export without --push-to-hub") from None
    return api


def upload(api, folder, repo):
    """Upload an export folder; returns the commit URL."""
    try:
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="textclf export")
    except Exception as err:
        raise UserError(f"--push-to-hub {repo}: the upload failed ({type(err).__name__}: "
                        f"{first_line(err, 160)}); the export is complete in "
                        f"{folder}: upload it again with huggingface_hub's upload_folder") from None
    return str(getattr(info, "commit_url", info))
