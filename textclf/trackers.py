"""train.report_to: experiment trackers through Accelerate (TensorBoard, Weights & Biases, MLflow).

Checked before anything is written (an unknown name or a missing package is one line with the
fix); started on the run's first log record, that is after every resume check passed; scalars
arrive as fold<k>/<record type>/<key> at the optimizer step.
"""

import importlib.util

from .errors import UserError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def names(report_to):
    """The trackers asked for, as a list: none / null / [] is no tracker."""
    if report_to is None:
        return []
    wanted = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for name in (str(n).strip().lower() for n in wanted) if name not in ("none", "")]


def check(report_to):
    """Refuse an unknown tracker, or one whose package is not installed; the trackers to use."""
    given = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "none" in [str(n).strip().lower() for n in given] and len(given) > 1:
        raise UserError(f"train.report_to={report_to}: none cannot be combined with trackers; give none or the trackers")
    chosen = names(report_to)
    for name in chosen:
        if name not in PACKAGES:
            raise UserError(f"train.report_to: unknown tracker '{name}'; use tensorboard, wandb, mlflow or none "
                            f"(or a list, e.g. [tensorboard,wandb])")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"train.report_to={name}, but the {PACKAGES[name]} package is not installed; "
                            f"pip install {PACKAGES[name]}, or use train.report_to=tensorboard or none")
    if len(set(chosen)) != len(chosen):
        raise UserError(f"train.report_to={report_to} names a tracker twice")
    return chosen


def accelerator_kwargs(report_to, run_dir):
    """Accelerator(...) arguments: the trackers, and TensorBoard's folder <run>/tensorboard/."""
    chosen = names(report_to)
    if not chosen:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": chosen,
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))}


def flat(config_dict, prefix=""):
    """Nested config as dotted keys with values trackers accept (numbers, text, booleans)."""
    out = {}
    for key, value in config_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
