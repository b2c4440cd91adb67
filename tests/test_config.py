import pytest

from textclf.config import parse_args
from textclf.errors import UserError
from conftest import write


def test_yaml_then_overrides_in_order(tmp_path):
    cfg_file = write(tmp_path / "task.yaml", "data:\n  max_len: 64\n  train_file: a.csv\ntrain:\n  lr: 1e-5\n  epochs: 2\n")
    cfg = parse_args(["--config", str(cfg_file), "data.max_len=32", "train.epochs=5", "data.max_len=48"])
    assert cfg.data.max_len == 48  # later overrides win
    assert cfg.train.epochs == 5.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)  # PyYAML reads 1e-5 as a string
    assert cfg.data.train_file == "a.csv"
    assert cfg.data.name == "task"  # default name: the config file's stem


def test_types_are_coerced():
    cfg = parse_args(["train.lr=2e-5", "train.folds=[0,1]", "data.valid_file=null", "train.head_lr=None",
                      "data.text_columns=[title,abstract]", "data.drop_empty=yes", "train.batch_size=16.0",
                      "train.class_weights=auto", "train.betas=[0.9, 0.98]"])
    assert cfg.train.lr == 2e-5
    assert cfg.train.folds == [0, 1]
    assert cfg.data.valid_file is None and cfg.train.head_lr is None
    assert cfg.data.text_columns == ["title", "abstract"]
    assert cfg.data.drop_empty is True
    assert cfg.train.batch_size == 16 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.class_weights == "auto"
    assert cfg.train.betas == [0.9, 0.98]
    assert parse_args(["train.folds=all"]).train.folds == "all"
    assert parse_args(["train.precision=no"]).train.precision == "no"  # not YAML's False
    assert parse_args(["data.text_columns=text"]).data.text_columns == ["text"]


def test_values_may_contain_equals_and_bare_keys_resolve():
    cfg = parse_args(["data.text_separator= = ", "lr=3e-4", "data.name=a=b"])
    assert cfg.data.text_separator == " = "
    assert cfg.data.name == "a=b"
    assert cfg.train.lr == 3e-4


@pytest.mark.parametrize("args, expected", [
    (["train.lrr=1"], "train.lr"),
    (["data.max_length=64"], "data.max_len"),
    (["trian.lr=1"], "train.lr"),
    (["max_lne=3"], "data.max_len"),
])
def test_unknown_key_names_the_closest(args, expected):
    with pytest.raises(UserError) as err:
        parse_args(args)
    assert expected in str(err.value) and "unknown config key" in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    cfg_file = write(tmp_path / "t.yaml", "train:\n  learning_rate: 1e-5\n")
    with pytest.raises(UserError) as err:
        parse_args(["--config", str(cfg_file)])
    assert "train.learning_rate" in str(err.value) and str(cfg_file) in str(err.value)
    cfg_file = write(tmp_path / "u.yaml", "trainn:\n  lr: 1\n")
    with pytest.raises(UserError, match="did you mean 'train'"):
        parse_args(["--config", str(cfg_file)])


def test_bad_values_and_flags():
    with pytest.raises(UserError, match="not a number"):
        parse_args(["train.lr=fast"])
    with pytest.raises(UserError, match="did you mean 'head_tail'"):
        parse_args(["data.truncation=headtail"])
    with pytest.raises(UserError, match="train.lr=<value>"):
        parse_args(["--lr", "1e-5"])
    with pytest.raises(UserError, match="ambiguous"):
        parse_args(["batch_size=8"])  # train and eval both have it
    with pytest.raises(UserError, match="section.key=value"):
        parse_args(["justaword"])
    with pytest.raises(UserError, match="not found"):
        parse_args(["--config", "/nonexistent/x.yaml"])


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_args(["train.lr=2e-5", "data.labels=[a,b]", "data.name=resolved", "data.valid_file=null"])
    saved = write(tmp_path / "resolved.yaml", cfg.to_yaml())
    again = parse_args(["--config", str(saved)])
    assert again.to_dict() == cfg.to_dict()
