"""train.py on tiny data with tiny random models: numbers that can be wrong."""

import json
import random

import numpy as np
import pytest

from conftest import write
from textclf.loader import LengthGroupedBatches

POS = ["great", "fun", "good", "love", "best", "funny"]
NEG = ["boring", "bad", "hate", "worst", "sad"]
FILLER = "the movie was a film story plot actor one two three very really".split()


def toy_rows(n, seed=0, classes=2):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % classes
        cue = [POS, NEG, ["cancer", "tumor", "cell"]][label]
        words = rng.sample(FILLER, rng.randint(2, 8)) + [rng.choice(cue)] * 2
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def make_data(stage, premodels, tmp_path, rows=None, family="bert", name="toy", extra=(), header="text,label",
              fmt=None):
    rows = rows if rows is not None else toy_rows(64)
    lines = fmt(rows) if fmt else [f"{t},{l}" for t, l in rows]
    train = write(tmp_path / f"{name}.csv", header + "\n" + "\n".join(lines) + "\n")
    result = stage("data_process", f"model.name={premodels(family)}", f"data.output_dir={tmp_path / 'data'}",
                   f"data.name={name}", f"data.train_file={train}", "data.max_len=32", *extra)
    assert result.code == 0, result
    return [f"model.name={premodels(family)}", f"data.output_dir={tmp_path / 'data'}", f"data.name={name}"]


def train(stage, tmp_path, base, *args, out="ck"):
    # fp32 unless a test asks otherwise: these tests compare numbers across runs, on any CPU
    result = stage("train", *base, f"train.output_dir={tmp_path / out}", "train.log_every_steps=1",
                   "train.precision=no", *args)
    assert result.code == 0, result
    return result


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l) for l in lines if json.loads(l)["type"] == kind]


def strip_time(recs):
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in recs]


def test_loss_falls_when_overfitting_a_small_batch(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(16))
    train(stage, tmp_path, base, "train.epochs=30", "train.batch_size=8", "train.lr=3e-3", "train.warmup=0",
          "train.scheduler=constant", "model.backbone_dropout=0", "model.dropout=0")
    losses = [r["loss"] for r in records(tmp_path / "ck" / "toy", "train")]
    assert losses[-1] < 0.1 * losses[0], losses
    assert losses[-1] < 0.05


def test_accumulation_gives_the_gradients_of_the_big_batch(stage, premodels, tmp_path):
    """Batch 8 in one step vs 4 x 2 accumulated: same loss and same gradient norm at every step."""
    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    common = ["train.epochs=1", "train.sampler=random", "model.backbone_dropout=0", "model.dropout=0",
              "train.max_grad_norm=0", "train.lr=1e-3", "data.name=toy"]
    train(stage, tmp_path, base, "train.batch_size=8", "train.grad_accum=1", *common, out="big")
    train(stage, tmp_path, base, "train.batch_size=4", "train.grad_accum=2", *common, out="acc")
    big = records(tmp_path / "big" / "toy", "train")
    acc = records(tmp_path / "acc" / "toy", "train")
    assert len(big) == len(acc) > 2  # same number of optimizer steps
    for a, b in zip(big, acc):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)


@pytest.mark.parametrize("scheduler, end", [("linear", 0.0), ("cosine", 0.0), ("constant", 1e-3), ("onecycle", None)])
def test_lr_follows_its_schedule_to_the_end(stage, premodels, tmp_path, scheduler, end):
    base = make_data(stage, premodels, tmp_path, toy_rows(32))
    train(stage, tmp_path, base, "train.epochs=2", "train.batch_size=4", "train.lr=1e-3", "train.warmup=4",
          f"train.scheduler={scheduler}")
    lrs = [r["lr"] for r in records(tmp_path / "ck" / "toy", "train")]
    assert len(lrs) == 14  # 28 train rows (4 held out) / 4 per batch = 7 steps an epoch
    assert max(lrs) == pytest.approx(1e-3, rel=1e-6 if scheduler != "onecycle" else 0.02)  # one-cycle peaks between steps
    assert lrs[0] < lrs[3]  # warming up
    if end is not None:
        assert lrs[-1] == pytest.approx(end, abs=1e-12)
    else:
        assert lrs[-1] < 1e-3 / 25 / 1e3  # one-cycle ends at max_lr / div_factor / final_div_factor


@pytest.mark.parametrize("head", ["cls", "mean", "pooler", "fusion"])
def test_every_head_trains_and_saves_a_complete_best(stage, premodels, tmp_path, head):
    base = make_data(stage, premodels, tmp_path)
    train(stage, tmp_path, base, "train.epochs=2", "train.batch_size=8", f"model.head={head}",
          "model.multi_sample_dropout=3", "train.lr=1e-3")
    best = tmp_path / "ck" / "toy" / "fold0" / "best"
    for name in ("model.safetensors", "config.json", "head.json", "metrics.json", "config.yaml", "tokenizer.json"):
        assert (best / name).is_file(), name
    spec = json.loads((best / "head.json").read_text())  # the same facts, in head.json's blocks
    assert spec["head"]["head"] == head and spec["labels"]["names"] == ["0", "1"]


@pytest.mark.parametrize("problem, extra", [
    ("binary_bce", ["train.class_weights=auto", "model.head=fusion"]),
    ("single_label", ["train.class_weights=[1.0,1.5]", "train.label_smoothing=0.1"]),
])
def test_binary_problem_types_learn(stage, premodels, tmp_path, problem, extra):
    base = make_data(stage, premodels, tmp_path, toy_rows(80))
    train(stage, tmp_path, base, "train.epochs=6", "train.batch_size=8", "train.lr=2e-3",
          f"model.problem_type={problem}", *extra)
    run = tmp_path / "ck" / "toy"
    oof = np.load(run / "oof" / "probs.npy")
    assert oof.shape[1] == 2 and np.allclose(oof.sum(1), 1, atol=1e-5)
    assert json.loads((run / "oof" / "metrics.json").read_text())["accuracy"] >= 0.75


def test_class_weights_and_smoothing_in_the_loss():
    import torch

    from textclf.problem import problem_type

    def make_loss(name, *args):
        return problem_type(name).loss(*args)

    def auto_class_weights(labels, name, n_labels):
        return problem_type(name).auto_class_weights(labels, n_labels)

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    ce = make_loss("single_label", [1.0, 3.0])(logits, labels)
    per_row = -torch.log_softmax(logits, -1)[torch.arange(3), labels]
    assert ce.item() == pytest.approx(((per_row * torch.tensor([1.0, 3.0, 3.0])).sum() / 7.0).item(), rel=1e-6)
    bce = make_loss("binary_bce", [1.0, 3.0])(logits[:, :1], labels)
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")
    assert bce.item() == pytest.approx(((per_row * torch.tensor([1.0, 3.0, 3.0])).sum() / 7.0).item(), rel=1e-6)
    smooth = make_loss("single_label", None, 0.2)(logits, labels)
    assert smooth.item() > make_loss("single_label")(logits, labels).item() * 0.9
    assert auto_class_weights(np.array([0, 0, 0, 1]), "single_label", 2) == pytest.approx([4 / 6, 2.0])
    assert auto_class_weights(np.array([[1, 0], [1, 1], [0, 0], [1, 0]]), "multi_label", 2) == pytest.approx([1 / 3, 3.0])


def multi_label_data(stage, premodels, tmp_path):
    """60 rows with three 0/1 label columns (pos, neg, med), processed; returns the common args."""
    rows = toy_rows(60, classes=3)
    flags = [[int(l == 0), int(l == 1), int(l == 2 or i % 5 == 0)] for i, (_, l) in enumerate(rows)]
    return make_data(stage, premodels, tmp_path, rows, header="text,pos,neg,med",
                     fmt=lambda rs: [f"{t},{f[0]},{f[1]},{f[2]}" for (t, _), f in zip(rs, flags)],
                     extra=["data.label_columns=[pos,neg,med]"])


def test_multi_label_with_auto_weights(stage, premodels, tmp_path):
    base = multi_label_data(stage, premodels, tmp_path)
    train(stage, tmp_path, base, "train.epochs=3", "train.batch_size=8", "train.lr=2e-3", "train.class_weights=auto",
          "train.metric=f1_micro", "model.head=mean")
    oof = np.load(tmp_path / "ck" / "toy" / "oof" / "probs.npy")
    assert oof.shape[1] == 3 and ((oof >= 0) & (oof <= 1)).all()


@pytest.mark.parametrize("family", ["distilbert", "roberta", "deberta-v2", "electra"])
def test_other_families_train_on_text_pairs(stage, premodels, tmp_path, family):
    rows = toy_rows(24)
    base = make_data(stage, premodels, tmp_path, rows, family=family, header="a\tb\tlabel",
                     fmt=lambda rs: [f"{t}\tquestion {i}\t{l}" for i, (t, l) in enumerate(rs)],
                     extra=["data.text_columns=a", "data.text_pair_column=b", "data.format=tsv"])
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "model.head=pooler")
    assert (tmp_path / "ck" / "toy" / "oof" / "probs.npy").is_file()


def test_same_seed_same_run(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path)
    args = ["train.epochs=2", "train.batch_size=8", "train.lr=1e-3", "train.eval_every_steps=5"]
    train(stage, tmp_path, base, *args, out="one")
    train(stage, tmp_path, base, *args, out="two")
    one, two = tmp_path / "one" / "toy", tmp_path / "two" / "toy"
    assert strip_time(records(one, "eval")) == strip_time(records(two, "eval"))
    assert strip_time(records(one, "train")) == strip_time(records(two, "train"))
    assert (one / "fold0/best/model.safetensors").read_bytes() == (two / "fold0/best/model.safetensors").read_bytes()


def test_resume_continues_at_the_same_batch(stage, premodels, tmp_path):
    """Stopped after its first step (mid-epoch) by max_time, then resumed: the finished run is
    bit-for-bit the uninterrupted one."""
    base = make_data(stage, premodels, tmp_path, toy_rows(48))
    args = ["train.epochs=2", "train.batch_size=8", "train.lr=1e-3"]
    train(stage, tmp_path, base, *args, out="straight")
    first = train(stage, tmp_path, base, *args, "train.max_time=0.000001", out="stopped")
    assert "train.resume=" in first.out
    run = tmp_path / "stopped" / "toy"
    state = json.loads(next(run.glob("fold0/last-*/state.json")).read_text())
    assert state["step"] == 1 and state["batch_in_epoch"] == 1  # it stopped mid-epoch
    assert not (run / "fold0" / "done.json").exists()
    second = train(stage, tmp_path, base, *args, "train.resume=auto", out="stopped")
    assert "resuming from last-00000001" in second.out
    straight = tmp_path / "straight" / "toy"
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval"))
    assert (run / "fold0/best/model.safetensors").read_bytes() == (straight / "fold0/best/model.safetensors").read_bytes()
    assert np.array_equal(np.load(run / "oof/probs.npy"), np.load(straight / "oof/probs.npy"))


def test_kfold_oof_covers_every_row_once(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(30), extra=["data.n_folds=3", "data.id_column=null"])
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8")
    run = tmp_path / "ck" / "toy"
    ids = np.load(run / "oof" / "ids.npy")
    assert ids.tolist() == [str(i) for i in range(30)]
    folds = np.load(run / "oof" / "folds.npy")
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    assert np.array_equal(folds, np.load(tmp_path / "data" / "toy" / "train" / "folds.npy"))
    assert all((run / f"fold{k}" / "done.json").is_file() for k in range(3))


def test_a_new_run_never_overwrites_an_old_one(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(16))
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8")
    first = (tmp_path / "ck" / "toy" / "fold0/best/model.safetensors").read_bytes()
    result = train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "train.seed=3")
    assert "toy-v2" in result.out
    assert (tmp_path / "ck" / "toy" / "fold0/best/model.safetensors").read_bytes() == first
    assert (tmp_path / "ck" / "toy-v2" / "fold0/best/model.safetensors").is_file()


def test_length_grouped_batches():
    lengths = np.random.default_rng(0).integers(3, 200, size=1000)
    sampler = LengthGroupedBatches(lengths, batch_size=16, seed=1, group=8)
    first = sampler.batches()
    assert sorted(i for b in first for i in b) == list(range(1000))  # every row exactly once
    assert first == sampler.batches()  # reproducible for a (seed, epoch)
    sampler.epoch = 1
    assert first != sampler.batches()  # a new order every epoch
    padded = sum(len(b) * lengths[b].max() for b in first)
    shuffled = np.random.default_rng(2).permutation(1000)
    padded_random = sum(len(shuffled[i:i + 16]) * lengths[shuffled[i:i + 16]].max() for i in range(0, 1000, 16))
    assert padded < 0.75 * padded_random  # grouping removes most of the padding


def test_early_stopping_and_save_total_limit(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(48))
    # lr 0: the metric can never improve after the first evaluation
    train(stage, tmp_path, base, "train.epochs=3", "train.batch_size=4", "train.lr=0", "train.eval_every_steps=2",
          "train.patience=2", "train.save_total_limit=2", "train.save_every_steps=1", "train.keep_state=true")
    run = tmp_path / "ck" / "toy"
    evals = records(run, "eval")
    assert [r["step"] for r in evals] == [2, 4, 6]  # best at 2, then two evaluations without improvement
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert done["stopped_early"] is True and done["best_step"] == 2
    assert [p.name for p in sorted((run / "fold0").glob("last-*"))] == ["last-00000005", "last-00000006"]


def test_layer_wise_lr_decay_and_no_decay_groups(premodels):
    from textclf.config import TrainConfig
    from textclf.model import HeadConfig, build_classifier
    from textclf.optim import make_optimizer

    model = build_classifier(premodels("bert"), HeadConfig(head="cls", dropout=0.1, multi_sample_dropout=1, n_outputs=2))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3, head_lr=5e-3, layer_lr_decay=0.5, weight_decay=0.1))
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    # 2 encoder layers: the top layer gets lr, the one below lr * 0.5, the embeddings lr * 0.25
    assert lr_of[id(named["backbone.encoder.layer.1.attention.self.query.weight"])] == (1e-3, 0.1)
    assert lr_of[id(named["backbone.encoder.layer.0.attention.self.query.weight"])] == (5e-4, 0.1)
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == (2.5e-4, 0.1)
    assert lr_of[id(named["backbone.encoder.layer.1.output.LayerNorm.weight"])] == (1e-3, 0.0)  # 1-D: no decay
    assert lr_of[id(named["fc.weight"])] == (5e-3, 0.1) and lr_of[id(named["fc.bias"])] == (5e-3, 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_arrays_are_opened_in_each_worker_not_pickled(stage, premodels, tmp_path):
    import pickle

    from textclf.loader import SplitArrays

    base = make_data(stage, premodels, tmp_path, toy_rows(200))
    split = tmp_path / "data" / "toy" / "train"
    dataset, unopened = SplitArrays(split), SplitArrays(split)
    batch = dataset.__getitems__([0, 5, 3])
    assert batch["input_ids"].shape[0] == 3 and batch["index"].tolist() == [0, 5, 3]
    assert dataset._arrays is not None and unopened._arrays is None
    # paths only: the open memmaps add nothing to the pickle, a worker reopens them itself
    assert pickle.dumps(dataset) == pickle.dumps(unopened)
    assert pickle.loads(pickle.dumps(dataset))._arrays is None
    # and training with worker processes gives the same result as without
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=16", "train.num_workers=2", out="workers")
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=16", "train.num_workers=0", out="inline")
    assert strip_time(records(tmp_path / "workers" / "toy", "eval")) == strip_time(records(tmp_path / "inline" / "toy", "eval"))


def test_freezing_keeps_the_lower_layers_and_refuses_too_many(stage, premodels, tmp_path):
    from safetensors.torch import load_file

    from textclf.model import HeadConfig, build_classifier, layer_index

    base = make_data(stage, premodels, tmp_path)
    result = stage("train", *base, f"train.output_dir={tmp_path / 'bad'}", "model.freeze_layers=3")
    assert result.code == 2 and "has 2 layers" in result.err and not (tmp_path / "bad").exists()
    result = train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "model.freeze_layers=1")
    assert "frozen: embeddings and 1 layer(s)" in result.out
    trained = load_file(str(tmp_path / "ck" / "toy" / "fold0" / "best" / "model.safetensors"))
    loaded = build_classifier(premodels("bert"), HeadConfig(head="cls", n_outputs=2)).state_dict()
    for name, value in trained.items():
        if not name.startswith("backbone.") or name not in loaded:
            continue
        index = layer_index(name[len("backbone."):])
        same = bool((value == loaded[name]).all())
        assert same == (index is not None and index <= 0), name  # embeddings and layer 0 kept, layer 1 trained


@pytest.mark.parametrize("name, index", [
    ("encoder.layer.3.attention.self.query.weight", 3), ("transformer.layer.0.ffn.lin1.weight", 0),
    ("layers.11.self_attn.q_proj.weight", 11), ("h.2.attn.c_attn.weight", 2), ("blocks.5.mlp.fc1.weight", 5),
    ("embeddings.word_embeddings.weight", -1), ("embed_tokens.weight", -1), ("wte.weight", -1),
    ("encoder.rel_embeddings.weight", -1), ("pooler.dense.weight", None), ("norm.weight", None),
    ("ln_f.weight", None),
])
def test_layer_index_understands_encoder_and_decoder_naming(name, index):
    from textclf.model import layer_index

    assert layer_index(name) == index


def test_data_keys_that_differ_from_the_arrays_are_refused_and_unset_ones_recorded(stage, premodels, tmp_path):
    import yaml

    base = make_data(stage, premodels, tmp_path, toy_rows(32))  # data_process ran with data.max_len=32
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "data.max_len=64")
    assert result.code == 2 and "data.max_len=64 differs" in result.err and "made with 32" in result.err
    assert "data_process.py" in result.err and not (tmp_path / "ck").exists()
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "data.max_len=32")  # the same value
    saved = yaml.safe_load((tmp_path / "ck" / "toy" / "config.yaml").read_text())
    assert saved["data"]["max_len"] == 32  # recorded from meta.json, not the default 128
    result = stage("evaluate", *base, f"train.output_dir={tmp_path / 'ck'}", f"eval.output_dir={tmp_path / 'mp'}",
                   "data.truncation=tail")
    assert result.code == 2 and "data.truncation='tail' differs" in result.err and not (tmp_path / "mp").exists()


def test_resume_from_a_named_state_redoes_the_steps_after_it(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(48))
    args = ["train.epochs=2", "train.batch_size=8", "train.lr=1e-3", "train.save_every_steps=2",
            "train.save_total_limit=10", "train.keep_state=true"]
    train(stage, tmp_path, base, *args, out="straight")
    run = tmp_path / "straight" / "toy"
    states = sorted(p.name for p in (run / "fold0").glob("last-*"))
    assert states[:2] == ["last-00000002", "last-00000004"] and (run / "fold0" / "done.json").is_file()
    straight_weights = (run / "fold0/best/model.safetensors").read_bytes()
    result = train(stage, tmp_path, base, *args, f"train.resume={run / 'fold0' / 'last-00000004'}", out="straight")
    assert "resuming from last-00000004" in result.out and "removed the later states" in result.out
    assert (run / "fold0" / "done.json").is_file()  # the finished fold was trained again from step 4
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(1, 13)) + list(range(5, 13))  # 6 steps an epoch; the redone ones logged again
    assert (run / "fold0/best/model.safetensors").read_bytes() == straight_weights  # and bit for bit the same


def test_epochs_are_counted_at_the_end_of_the_data(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(32))
    train(stage, tmp_path, base, "train.epochs=2", "train.batch_size=8", "train.keep_state=true")
    run = tmp_path / "ck" / "toy"
    assert [r["epoch"] for r in records(run, "eval")] == [1, 2]  # after the first epoch, after the second
    state = json.loads(next(run.glob("fold0/last-*/state.json")).read_text())
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (2, 0, 8)


def test_a_head_json_of_the_earlier_flat_format_still_loads(stage, premodels, tmp_path):
    from textclf.model import load_classifier

    base = make_data(stage, premodels, tmp_path, toy_rows(16))
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8")
    best = tmp_path / "ck" / "toy" / "fold0" / "best"
    spec = json.loads((best / "head.json").read_text())
    flat = {**spec["head"], "problem_type": spec["labels"]["problem_type"], "label_names": spec["labels"]["names"],
            **spec["tokenization"], **spec["provenance"]}
    (best / "head.json").write_text(json.dumps(flat))
    model, loaded = load_classifier(best)
    assert loaded.labels.names == ["0", "1"] and loaded.tokenization.max_len == 32 and loaded.head.head == "cls"
    (best / "head.json").write_text(json.dumps({"format": 2, "head": {}}))
    from textclf.errors import UserError

    with pytest.raises(UserError, match="not a textclf head.json"):
        load_classifier(best)


@pytest.mark.parametrize("name, depth", [
    ("layers.3.self_attn.q_proj.weight", 0), ("layers.0.mlp.up_proj.weight", 3), ("embed_tokens.weight", 4),
    ("norm.weight", 0), ("h.1.attn.c_attn.weight", 2), ("encoder.layer.2.output.dense.weight", 1),
])
def test_layer_depth_for_encoder_and_decoder_names(name, depth):
    from textclf.optim import layer_depth

    assert layer_depth(name, 4) == depth


def test_the_banner_says_how_many_lr_groups(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(16))
    result = train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "train.layer_lr_decay=0.8",
                   "train.head_lr=1e-3")
    # 2 layers + embeddings + head: 4 LRs, each with and without weight decay
    assert "8 parameter groups, 4 peak LR(s)" in result.out
    assert "precision fp32 (requested: train.precision=no)" in result.out


# ---------------------------------------------------------------------------- what a run shows at its end


def test_max_steps_sets_the_schedule_and_the_stop(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path)
    result = train(stage, tmp_path, base, "train.epochs=5", "train.max_steps=3", "train.batch_size=8",
                   "train.folds=[0]", "train.warmup=0", "train.scheduler=linear")
    run_dir = tmp_path / "ck" / "toy"
    done = json.loads((run_dir / "fold0" / "done.json").read_text())
    assert done["steps"] == 3
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3]
    assert records(run_dir, "start")[0]["total_steps"] == 3
    lrs = [r["lr"] for r in records(run_dir, "train")]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[0] > lrs[1] > 0  # linear decay over 3 steps, not 5 epochs
    assert "train.max_steps=3" in result.out


def test_run_ends_with_test_metrics_texts_curves_times_and_a_profile(stage, premodels, tmp_path):
    rows = toy_rows(48)
    test_rows = toy_rows(20, seed=3)
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    write(tmp_path / "test.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in test_rows))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=toy"]
    assert stage("data_process", *base, f"data.train_file={tmp_path / 'train.csv'}",
                 f"data.test_file={tmp_path / 'test.csv'}", "data.max_len=32").code == 0
    result = train(stage, tmp_path, base, "train.epochs=2", "train.batch_size=8", "train.profile_steps=2",
                   "eval.texts=[\"good great film\", \"awful bad\"]", "train.report_to=tensorboard")
    run_dir = tmp_path / "ck" / "toy"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["rows"] == 20 and 0 <= summary["test"]["accuracy"] <= 1
    assert "precision" in (run_dir / "test_report.txt").read_text()  # the per-class report
    assert [t["text"] for t in summary["texts"]] == ["good great film", "awful bad"]
    assert all(abs(sum(t["probs"].values()) - 1) < 1e-5 and t["label"] in ("0", "1") for t in summary["texts"])
    assert "test split (20 rows" in result.out and "good great film" in result.out
    assert summary["fold_seconds"]["0"] > 0 and summary["seconds"] >= summary["fold_seconds"]["0"]
    assert json.loads((run_dir / "fold0" / "done.json").read_text())["seconds"] > 0
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(f.parent)).Reload() for f in (run_dir / "tensorboard").rglob("events.out.tfevents.*")]
    losses = [e.Scalars("fold0/train/loss") for e in events if "fold0/train/loss" in e.Tags()["scalars"]]
    assert losses and [s.step for s in losses[0]][:2] == [1, 2]  # TensorBoard has every logged step
    traces = list((run_dir / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("aten::" in e.get("name", "") for e in events)  # real operator spans, viewable in Perfetto


def test_end_of_run_texts_are_checked_before_training(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path)
    for texts, message in (('["fine", "\u200b "]', "item 1 is empty"), ("[]", "eval.texts is empty")):
        result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", f"eval.texts={texts}")
        assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result
        assert not (tmp_path / "ck").exists()


def test_a_finished_k_fold_run_keeps_its_best_weights_not_its_states(stage, premodels, tmp_path):
    """Disk: a finished fold keeps best/, oof/ and its logs; its resumable states (weights and
    optimizer, about 3x the model) go unless train.keep_state=true. The summary says the footprint."""
    base = make_data(stage, premodels, tmp_path, toy_rows(48), extra=("data.n_folds=3",))
    result = train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "train.report_to=none")
    run = tmp_path / "ck" / "toy"
    assert not list(run.glob("fold*/last-*")) and "train: disk" in result.out
    best = sum((run / f"fold{k}" / "best" / "model.safetensors").stat().st_size for k in range(3))
    files = {p: p.stat().st_size for p in run.rglob("*") if p.is_file()}
    total = sum(files.values())
    # beyond the best weights: the figures (curves.png, reliability.png), logs, OOF rows, each best/'s config,
    # tokenizer and remote code; never a resumable state (~3x the model)
    assert total - best < 360_000, sorted(files.items(), key=lambda kv: -kv[1])[:8]
    disk = json.loads((run / "summary.json").read_text())["disk"]
    assert disk["state_bytes"] == 0 and abs(disk["bytes"] - total) < 4096  # all but summary.json itself
    kept = train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "train.report_to=none",
                 "train.keep_state=true", out="kept")
    assert kept.code == 0 and len(list((tmp_path / "kept" / "toy").glob("fold*/last-*"))) == 3
    kept_disk = json.loads((tmp_path / "kept" / "toy" / "summary.json").read_text())["disk"]
    assert kept_disk["state_bytes"] > 2 * best  # each state holds the weights and the optimizer's two moments
    # the printed resume command (no overrides) keeps what the run keeps on disk: its states stay
    states = sorted(p.name for p in (tmp_path / "kept" / "toy").glob("fold*/last-*"))
    again = stage("train", f"train.resume={tmp_path / 'kept' / 'toy'}")
    assert again.code == 0, again
    assert sorted(p.name for p in (tmp_path / "kept" / "toy").glob("fold*/last-*")) == states
