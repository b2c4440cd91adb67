"""Tuning: Optuna searches the train/model keys in tune.space; every trial is a normal run.

    python -m textclf.tune --config configs/sst2.yaml tune.trials=8      (or: textclf-tune ...)

    tune:
      space:
        train.lr: {low: 1.0e-5, high: 3.0e-4, log: true}
        train.epochs: {low: 1, high: 4, step: 1}
        model.head: {choices: [cls, mean]}

The objective is the run's out-of-fold train.metric over its folds (the holdout metric with one
split), its direction the metric's. TPE samples (after tune.startup_trials random ones); the
median pruner reads every evaluation a trial makes and stops one that is below the median of the
earlier trials at the same point, through the run's own stop path: its state is saved and its run
folder stays a valid run that train.resume finishes. Trial k is the run <study>-t<k> in
train.output_dir, so its predictions can be evaluated and blended like any run's.

The study lives in <train.output_dir>/<study>-tune/: study.db (SQLite; tune.storage takes any
database URL Optuna supports, so processes or machines can share a study), and after each session
trials.csv, best.yaml (the best trial's config, which train.py takes), tune.json and Optuna's
figures (history.png, importances.png). A study that was killed resumes: the finished trials
(complete or pruned) count towards tune.trials and never run again; a trial cut off by a kill on
this machine (its run folder no longer locked) is run again with the same settings and resumes its
run folder; one silent for twice tune.heartbeat seconds on another machine is too.
"""

import contextlib
import copy
import csv
import io
import math
import os
import re
import socket
import sys
import time
import typing

from .config import coerce, field_types, parse_args, resolve_path, validate
from .errors import UserError, run_cli
from .fileio import atomic_write_text, claim_folder, write_json

RUN_ATTR, HOST_ATTR, PID_ATTR, RETRY_ATTR = "run", "host", "pid", "retry_of"


def say(message):
    print(message, flush=True)


def main(argv, prog="python -m textclf.tune"):
    config = parse_args(argv, prog=prog)
    run(config)


def run(config, on_trial=None):
    """Run the study until tune.trials finished trials (or tune.timeout); returns the study folder.
    `on_trial(trial_number)` is called as each trial starts (tests use it to kill one)."""
    optuna = _optuna()
    tune_cfg = config.tune
    if not tune_cfg.space:
        raise UserError("tune.space is empty; give the keys to search, e.g. tune.space='{train.lr: {low: 1.0e-5, "
                        "high: 3.0e-4, log: true}}'")
    name = tune_cfg.study or config.train.run or config.data.name
    if not name:
        raise UserError("tune.study is not set (nor train.run or data.name); name the study, e.g. tune.study=sst2-lr")
    folder = resolve_path(config.train.output_dir) / f"{name}-tune"
    if config.train.max_time:
        raise UserError("train.max_time stops a run before it finishes, and a trial is scored when its run finishes; "
                        "leave train.max_time at 0 and give the study tune.timeout")
    check_space(config)
    direction = metric_direction(config)
    if not claim_folder(folder, "tune"):
        raise UserError(f"{folder} exists and was not made by textclf as a study; choose another tune.study")
    with opening(folder):  # two processes creating one SQLite study at once would race on its tables
        study = open_study(optuna, config, name, folder, direction)
    with alive(folder):  # held while this process runs trials: recovery elsewhere knows it is not dead
        return run_study(optuna, study, config, folder, name, direction, on_trial)


def run_study(optuna, study, config, folder, name, direction, on_trial):
    tune_cfg = config.tune
    recover_dead_trials(optuna, study, folder)
    finished = count_finished(optuna, study)
    say(f"tune: study {name} ({tune_cfg.storage or folder / 'study.db'}): {finished} of {tune_cfg.trials} "
              f"trials finished, {direction} {config.train.metric}")
    if finished < tune_cfg.trials:
        objective = Objective(optuna, config, name, on_trial)
        # a trial refused (UserError) ends the study with that one line: trials are settings check_space passed,
        # so a refusal is about the data or the machine, and every later trial would meet it too
        study.optimize(objective, timeout=tune_cfg.timeout or None, gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(tune_cfg.trials, states=(
                           optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])
    write_results(optuna, study, config, folder, name)
    return folder


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("tuning needs Optuna: pip install 'textclf[tune]' (or optuna>=5.1)") from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's traceback: textclf says it in one line
    # heartbeats and the matplotlib figures are marked experimental; they are what tune uses
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ---------------------------------------------------------------------------- the space


def check_space(config):
    """Every key of tune.space at both ends of its range (each choice) gives a config that passes
    everything train.py checks before it writes (the base config too), so that no trial is refused
    for what could be known now."""
    from . import train

    train.check(copy.deepcopy(config))
    for section, key_name, spec in config.tune.parameters():
        values = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        for value in values:
            trial_config = copy.deepcopy(config)
            setattr(getattr(trial_config, section), key_name,
                    coerce(value, field_types(section)[key_name], f"tune.space.{section}.{key_name}"))
            try:
                validate(trial_config)
                train.check(trial_config)
            except UserError as err:
                raise UserError(f"tune.space.{section}.{key_name}={value!r} would be refused by every trial that "
                                f"draws it: {err}") from None


def metric_direction(config):
    """"maximize" or "minimize": train.metric (auto: the problem's default) as metrics.metric_mode has it."""
    from .datadir import load_meta
    from .metrics import metric_mode
    from .problem import problem_type

    if config.train.metric == "auto":
        meta = load_meta(resolve_path(config.data.output_dir) / config.data.name)
        config.train.metric = problem_type(meta["problem_type"]).default_metric
    mode = metric_mode(config.train.metric, config.train.metric_mode)
    return "maximize" if mode == "max" else "minimize"


def suggest(trial, section, key_name, spec, tp):
    """A value for one key from the trial, as its type declares."""
    label = f"{section}.{key_name}"
    if "choices" in spec:
        choices = [coerce(c, tp, label) for c in spec["choices"]]
        shown = [c if isinstance(c, (int, float, str, bool)) or c is None else repr(c) for c in choices]
        picked = trial.suggest_categorical(label, shown)
        return choices[shown.index(picked)]
    kinds = typing.get_args(tp) or (tp,)
    if int in kinds and float not in kinds:
        return trial.suggest_int(label, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                 log=bool(spec.get("log", False)))
    step = spec.get("step")
    return trial.suggest_float(label, float(spec["low"]), float(spec["high"]),
                               step=None if step is None else float(step), log=bool(spec.get("log", False)))


# ---------------------------------------------------------------------------- the study


def open_study(optuna, config, name, folder, direction):
    tune_cfg = config.tune
    url = tune_cfg.storage or f"sqlite:///{folder / 'study.db'}"
    kwargs = {}
    if tune_cfg.heartbeat:
        kwargs = dict(heartbeat_interval=int(tune_cfg.heartbeat), grace_period=int(2 * tune_cfg.heartbeat),
                      heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **kwargs)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy and driver errors have no common base here
        raise UserError(f"tune.storage {url}: cannot open it ({str(err).splitlines()[0][:200]}); pass a database URL "
                        f"Optuna supports, e.g. sqlite:///path/study.db") from None
    sampler = optuna.samplers.TPESampler(seed=tune_cfg.seed, n_startup_trials=tune_cfg.startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune_cfg.startup_trials, n_warmup_steps=1)
              if tune_cfg.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise UserError(f"study {name} in {url} was made to {study.direction.name.lower()}, and train.metric="
                        f"{config.train.metric} is to {direction}; choose another tune.study")
    return study


@contextlib.contextmanager
def opening(folder):
    """Processes on this machine open (and create) the study one at a time (a blocking file lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(folder / ".opening.lock", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def engine_kwargs(url):
    """SQLite shared by processes: wait for a lock rather than fail at once."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def count_finished(optuna, study):
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_folder(config, run_name):
    return resolve_path(config.train.output_dir) / run_name


def recover_dead_trials(optuna, study, folder):
    """A trial left running by a process that died on this machine (its process no longer holds its
    mark, see `alive`) is failed and queued again with the same settings; the new trial resumes
    its run folder."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_name, pid = trial.user_attrs.get(RUN_ATTR), trial.user_attrs.get(PID_ATTR)
        if trial.user_attrs.get(HOST_ATTR) != host or not run_name or still_alive(folder, pid):
            continue
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RUN_ATTR: run_name, RETRY_ATTR: trial.number},
                            skip_if_exists=False)
        say(f"tune: trial {trial.number} was cut off (its process ended); it runs again and resumes {run_name}")


def mark_path(folder, pid):
    host = re.sub(r"[^\w.-]", "_", socket.gethostname())[:64]
    return folder / f".process-{host}-{pid}.lock"


@contextlib.contextmanager
def alive(folder):
    """A lock this process holds for as long as it runs trials (released by the system however the
    process ends): a trial whose process holds none is dead."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; a killed trial stays running in the study
        yield
        return
    path = mark_path(folder, os.getpid())
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            path.unlink(missing_ok=True)


def still_alive(folder, pid):
    """Whether the process that ran a trial still holds its mark (see `alive`)."""
    try:
        import fcntl
    except ImportError:
        return True
    path = mark_path(folder, pid)
    if not isinstance(pid, int) or not path.is_file():
        return False
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    path.unlink(missing_ok=True)
    return False


class Objective:
    """One trial: the config with the trial's values, a run, its out-of-fold metric."""

    def __init__(self, optuna, config, name, on_trial=None):
        self.optuna, self.config, self.name, self.on_trial = optuna, config, name, on_trial

    def __call__(self, trial):
        from . import train

        config = self.trial_config(trial)
        run_name = config.train.run
        trial.set_user_attr(RUN_ATTR, run_name)
        trial.set_user_attr(HOST_ATTR, socket.gethostname())
        trial.set_user_attr(PID_ATTR, os.getpid())
        if self.on_trial:
            self.on_trial(trial.number)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        say(f"tune: trial {trial.number} ({shown}) -> run {run_name}"
                  + (" (resumed)" if config.train.resume else ""))
        pruning = Pruning(trial, evaluations_logged(run_folder(config, run_name)))
        started = time.time()
        try:
            run_dir = train.run(config, on_eval=pruning)
        finally:
            reset_accelerate()
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        summary = run_dir / "summary.json"
        if pruning.pruned and not summary.is_file():
            say(f"tune: trial {trial.number} pruned at its evaluation {pruning.count} (run {run_dir} stays "
                      f"resumable)")
            raise self.optuna.TrialPruned()
        if not summary.is_file():
            raise UserError(f"trial {trial.number}: run {run_dir} stopped before it finished (train.max_time?); "
                            f"resume it with train.resume={run_dir}")
        import json

        value = json.loads(summary.read_text(encoding="utf-8"))["oof"][config.train.metric]
        say(f"tune: trial {trial.number}: out-of-fold {config.train.metric} {value:.4f}")
        return value

    def trial_config(self, trial):
        config = copy.deepcopy(self.config)
        for section, key_name, spec in config.tune.parameters():
            value = suggest(trial, section, key_name, spec, field_types(section)[key_name])
            setattr(getattr(config, section), key_name, value)
            config.explicit.add(f"{section}.{key_name}")
        validate(config)
        retry = trial.user_attrs.get(RUN_ATTR)  # a trial run again (cut off here, or silent elsewhere): its run
        run_name = retry or f"{self.name}-t{trial.number:03d}"
        folder = run_folder(config, run_name)
        if not retry and (folder.exists() or folder.is_symlink()):
            raise UserError(f"{folder} exists, and trial {trial.number} of study {self.name} is new: it is an earlier "
                            f"study's run (its study.db removed, or another tune.storage); choose another tune.study, "
                            f"or move the old runs away")
        config.train.run, config.train.overwrite = run_name, False
        config.program = "python train.py"  # what a message about the run names to continue it
        config.train.resume = str(folder) if (folder / "run.json").is_file() else None
        return config


def evaluations_logged(run_dir):
    """The evaluations a run folder's log holds (a resumed trial counts on from there)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    from .checkpoint import read_log

    return len({(r.get("fold"), r.get("step")) for r in read_log(path) if r.get("type") == "eval"})


class Pruning:
    """Each evaluation's metric reported to the trial (step: the run's evaluation count, across its
    folds); True stops the run through its stop path when the pruner says so."""

    def __init__(self, trial, start=0):
        self.trial, self.count, self.pruned = trial, start, False

    def __call__(self, fold, step, value):
        if not math.isfinite(value):
            return False
        self.trial.report(value, self.count)
        self.count += 1
        self.pruned = self.trial.should_prune()
        return self.pruned


def reset_accelerate():
    """Accelerate keeps process-wide state; each trial is a run of its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------- what a study writes


def write_results(optuna, study, config, folder, name):
    """trials.csv, best.yaml, tune.json and the figures, each written whole."""
    trials = study.get_trials(deepcopy=False)
    keys = [f"{s}.{k}" for s, k, _ in config.tune.parameters()]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "state", config.train.metric, "seconds", "run", *keys])
    for t in trials:
        writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}",
                         t.user_attrs.get("seconds", ""), t.user_attrs.get(RUN_ATTR, ""),
                         *[t.params.get(k, "") for k in keys]])
    atomic_write_text(folder / "trials.csv", buf.getvalue())
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    record = {"study": name, "storage": config.tune.storage or str(folder / "study.db"),
              "metric": config.train.metric, "direction": study.direction.name.lower(),
              "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}}
    if complete:
        best = study.best_trial
        best_config = copy.deepcopy(config)
        for section, key_name, _ in config.tune.parameters():
            label = f"{section}.{key_name}"
            if label in best.params:
                setattr(getattr(best_config, section), key_name,
                        coerce(best.params[label], field_types(section)[key_name], label))
        best_config.train.run, best_config.train.resume, best_config.train.overwrite = f"{name}-best", None, False
        best_config.tune.space = {}
        atomic_write_text(folder / "best.yaml", best_config.to_yaml())
        record["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                          "run": best.user_attrs.get(RUN_ATTR)}
        say(f"tune: best trial {best.number}: {config.train.metric} {best.value:.4f} with "
                  + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
                  + f"; its config: {folder / 'best.yaml'} (python train.py --config {folder / 'best.yaml'})")
    record["figures"] = draw(optuna, study, folder)
    write_json(folder / "tune.json", record)
    say(f"tune: wrote {folder / 'trials.csv'}")


def draw(optuna, study, folder):
    """Optuna's own matplotlib figures: the optimisation history and (two or more complete trials)
    the parameter importances. Returns the names written."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optuna.visualization import matplotlib as views

    written = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    figures = [("history.png", views.plot_optimization_history)]
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        figures.append(("importances.png", views.plot_param_importances))
    for file_name, plot in figures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                say(f"tune: {file_name} skipped ({str(err).splitlines()[0][:120]})")
                continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        tmp = folder / f".{file_name}.tmp.png"
        figure.savefig(tmp, dpi=110)
        plt.close(figure)
        tmp.replace(folder / file_name)
        written.append(file_name)
    return written


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        run_cli(main)
    sys.stdout.flush()
