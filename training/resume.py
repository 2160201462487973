"""Resume rules for training.train: the output dir, the run's plan, its settings, a finished run.

A dir that already holds checkpoints is only reused with --resume, and a resume must keep
the run's plan (its total steps) unless the schedule does not depend on it, and every
other setting that can change the adapter (core.fingerprint's TRAINING scope, recorded in
run_settings.json when the run starts).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from core.config import Config, TrainingConfig
from core.errors import UserError, first_line
from core.fingerprint import TRAINING, output_settings, value_hash
from training.logs import TRAIN_LOG

log = logging.getLogger("training.train")

SETTINGS_FILE = "run_settings.json"  # the settings a run started with, checked by a --resume

# schedules whose learning rate does not depend on the planned total: a resume may change it
_LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup", "reduce_lr_on_plateau")


class TrainError(UserError, RuntimeError):
    """A problem with the run itself (output dir, resume); one line for the user."""


class RunFinished(Exception):
    """--resume of a run that already reached its end: nothing to train (exit 0, one line)."""


def check_output_dir(output_dir: Path, t: TrainingConfig) -> str | None:
    """Fail now, not after hours, if output_dir is unusable; return the checkpoint to resume.

    A dir that already holds checkpoints is only reused with --resume: starting afresh
    there would mix two runs and let checkpoint rotation delete the old run's files.
    A resume must also keep the run's plan (check_resume_plan).
    """
    from transformers.trainer_utils import get_last_checkpoint

    resume = t.resume

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test"):
            pass
    except OSError as exc:
        raise TrainError(f"output dir not writable: {output_dir} ({exc.strerror or exc})") from None
    last = get_last_checkpoint(str(output_dir))
    if resume and last is None:
        log.warning("--resume: no checkpoint-* dir in %s yet, starting from scratch", output_dir)
    if not resume and last is not None:
        raise TrainError(
            f"output dir {output_dir} already holds checkpoints of an earlier run "
            f"(latest {Path(last).name}): pass --resume to continue it, or choose another --output-dir"
        )
    if resume and last is not None and t.max_steps > 0:  # an epoch plan is known only with the data
        check_resume_plan(Path(last), t, t.max_steps)
    return last if resume else None


def read_trainer_state(checkpoint: Path) -> tuple[int, int]:
    """(global_step, max_steps) of a checkpoint."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainError(
            f"cannot resume from {checkpoint}: bad trainer_state.json ({first_line(exc)}); "
            "a save cut short? delete that checkpoint to resume from the one before"
        ) from None


def finished_step(output_dir: Path) -> int | None:
    """The step at which a run in output_dir ended and saved its final adapter (None: none did)."""
    try:
        history = json.loads((output_dir / TRAIN_LOG).read_text())
        return max((int(e["step"]) for e in history if e.get("finished")), default=None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_resume_plan(checkpoint: Path, t: TrainingConfig, planned_now: int) -> None:
    """Refuse a resume whose plan (total steps) differs; RunFinished if there is nothing left.

    The scheduler is rebuilt for the new total at the old step, so a cosine or linear
    schedule would jump from the old plan's decayed rate to the new plan's; and resuming a
    finished run trains a step past its end and overwrites the final adapter.
    """
    step, planned = read_trainer_state(checkpoint)
    length_free = t.lr_scheduler_type in _LENGTH_FREE_SCHEDULES
    if planned_now != planned:
        if not length_free:
            raise TrainError(
                f"--resume: {checkpoint.name} is from a run planned for {planned} steps, this one would run "
                f"{planned_now}: the {t.lr_scheduler_type} learning-rate schedule would switch plans mid-run; "
                f"keep --max-steps {planned}, or start a new --output-dir"
            )
        if step < planned_now:
            return
    ended = finished_step(checkpoint.parent)
    if step >= planned_now or (ended is not None and ended >= step):
        more = "raise --max-steps to train more" if length_free else f"a {t.lr_scheduler_type} schedule cannot be extended"
        raise RunFinished(f"already finished at step {max(step, ended or 0)}: {more}, or use another --output-dir")


def _resume_plan_callback(checkpoint: Path, t: TrainingConfig):
    """check_resume_plan once the Trainer knows the new total (an epoch plan depends on the data)."""
    from transformers import TrainerCallback

    class ResumePlanCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            check_resume_plan(checkpoint, t, state.max_steps)

    return ResumePlanCallback()


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check_run_settings(output_dir: Path, cfg: Config, resolved: dict, resuming: bool) -> None:
    """Record the run's settings; on a resume, refuse (one line) settings that would change its adapter.

    The plan (max_steps, num_train_epochs) is check_resume_plan's; scheduling keys (logging,
    output dir, checkpoints kept) may change. A checkpoint dir from before this record
    existed is resumed with a warning, and recorded from then on.
    """
    settings = json.loads(json.dumps(output_settings(cfg, resolved, scope=TRAINING), default=str))
    path = output_dir / SETTINGS_FILE
    if resuming:
        try:
            old = json.loads(path.read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("--resume: %s has no record of its run's settings (an older run): not checked", output_dir)
        else:
            changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
            if changed:
                diffs = ", ".join(f"{k} {_short(old.get(k))} -> {_short(settings.get(k))}" for k in changed)
                raise TrainError(f"--resume: {output_dir} was trained with other settings ({diffs}); resume with "
                                 "the same settings, or start fresh in another --output-dir")
    tmp = path.with_name(f".{SETTINGS_FILE}.{os.getpid()}")  # every rank writes the same record
    tmp.write_text(json.dumps({"settings_hash": value_hash(settings), "settings": settings}, indent=1) + "\n")
    os.replace(tmp, path)
