"""What keeps a run intact: one run per folder, a clean stop on Ctrl-C and SIGTERM, non-finite losses caught at
their step, and a full disk reported without touching the previous checkpoint.

Design choices:
- The folder lock is `fcntl.flock` on `<run>/.llmkit-lock`: the kernel releases it when the process ends, however
  it ends, so a killed run never leaves it stuck. The lock file is the only thing llmkit writes into a folder
  before the run has started; a run that stops on bad input removes the folder again if it made it.
- The first SIGINT or SIGTERM asks the Trainer to save a checkpoint at the end of the current step and stop; the
  run then exits with one line saying how to resume. A second signal exits at once (the checkpoint being written,
  if any, stays incomplete and `--resume` skips it). With several processes the request is shared at every step,
  so all of them stop at the same step.
- A loss or gradient norm that is NaN or infinite stops the run at that step, before the optimizer applies it,
  with one line naming the step and the usual causes (`training.on_nonfinite: stop`, the default); `skip` drops
  the step's update instead, and the run counts the steps it skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import signal

import torch
from transformers import TrainerCallback

from ..compat import foreach_norm
from ..config import ConfigError, RunError

LOCK = ".llmkit-lock"
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def lock_holder(out: pathlib.Path) -> str | None:
    """Who holds `out`'s run lock now ("pid N"), or None when no process does. Only reads: a folder without a lock
    file gets none."""
    import fcntl

    lock = out / LOCK
    if not lock.is_file():
        return None
    with lock.open() as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _owner(handle)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _owner(handle) -> str:
    """What the holder wrote into the lock file (run_lock writes "pid N")."""
    handle.seek(0)
    return handle.read().strip() or "another process"


def in_use_error(out: pathlib.Path, owner: str) -> ConfigError:
    return ConfigError(f"{out} is in use by another llmkit run ({owner}); wait for it to finish or set "
                       "training.output_dir to another folder")


@contextlib.contextmanager
def run_lock(out: pathlib.Path, enabled: bool = True):
    """Hold `out`'s lock for the run; refuse at once (one line) when another run holds it."""
    if not enabled:
        yield
        return
    import fcntl

    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    handle = (out / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _owner(handle)
        handle.close()
        raise in_use_error(out, owner) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    finished = False
    try:
        yield
        finished = True
    finally:
        if made and not finished and [p.name for p in out.iterdir()] == [LOCK]:
            shutil.rmtree(out, ignore_errors=True)  # nothing was written: leave no folder behind
        handle.close()


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: save a checkpoint at the end of this step and stop (a second signal: stop now)."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
                self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signum
        for sig in self.previous:  # a second signal: the default behaviour (exit now)
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)

    def on_step_end(self, args, state, control, **kw):
        requested = self.received is not None
        if self.world_size > 1:  # every process stops at the same step, or the others would wait forever
            flag = torch.tensor([1.0 if requested else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
            if requested and self.received is None:
                self.received = signal.SIGTERM
        if requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or signal.SIGINT)


class TimeBudget(TrainerCallback):
    """`training.max_time`: once this many seconds of training have passed, the step that ends past the budget is
    the last one; the run then evaluates, saves and writes its run folder as at `max_steps`. With several
    processes the main process's clock decides, so every process stops at the same step."""

    def __init__(self, seconds: float, world_size: int):
        self.seconds, self.world_size = float(seconds), world_size
        self.start: float | None = None
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kw):
        import time

        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kw):
        import time

        over = self.start is not None and time.monotonic() - self.start >= self.seconds
        if self.world_size > 1:
            flag = torch.tensor([1.0 if over else 0.0], device=args.device)
            torch.distributed.broadcast(flag, src=0)
            over = bool(flag.item())
        if over and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        return control


def nonfinite_error(step: int, what: str, value: float, out: pathlib.Path, fp16: bool) -> RunError:
    from .run_folder import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(out)
    causes = "a learning rate too high, " + ("fp16 overflow (use bf16), " if fp16 else "") + "a bad batch"
    then = (f"the last good checkpoint is {checkpoint.name}: resume from it with --resume and a lower "
            "training.learning_rate" if checkpoint else "no checkpoint was saved before it: start again with a lower "
            "training.learning_rate")
    return RunError(f"step {step}: the {what} became {value} (usual causes: {causes}); {then}, or set "
                    "training.on_nonfinite=skip to skip such steps")


def grads_finite(parameters) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack(foreach_norm(grads))).all())


def disk_full(err: BaseException) -> bool:
    """A write that failed for lack of space: an OSError (ENOSPC, EFBIG, EDQUOT), or torch.save's zip writer,
    which reports a short write as a RuntimeError without the errno."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL
    text = str(err)
    return isinstance(err, RuntimeError) and "inline_container" in text and (
        "unexpected pos" in text or "write" in text.lower())


def disk_full_error(err: BaseException, out: pathlib.Path) -> RunError:
    """Remove the checkpoint the full disk left incomplete and say where the run can resume."""
    from .run_folder import CHECKPOINT_RE, last_complete_checkpoint

    complete = last_complete_checkpoint(out)
    for path in out.glob("checkpoint-*"):
        if CHECKPOINT_RE.match(path.name) and path != complete and (
                complete is None or int(path.name.split("-")[1]) > int(complete.name.split("-")[1])):
            shutil.rmtree(path, ignore_errors=True)
    where = (f"the last complete checkpoint is {complete.name}: free some space, then continue with --resume"
             if complete else "no checkpoint is complete: free some space, then start again")
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else "a write came up short"
    what = getattr(err, "filename", None) or out
    return RunError(f"the disk is full ({reason} writing {what}; no space left, or a file size limit); {where}")
