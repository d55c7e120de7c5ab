"""The ends of training that are not its last step: SIGINT / SIGTERM (:class:`GracefulStop`: a checkpoint at the
step, then ``INTERRUPTED``) and a non-finite loss or gradient (:class:`NonFiniteStop`: ``FAIL`` at the step it
appears).  With several processes each decision is every rank's, so no rank trains on alone."""

from __future__ import annotations

from typing import Any, Optional

from transformers import TrainerCallback

from sllmx.runtime import Runtime


class GracefulStop(TrainerCallback):
    """SIGINT / SIGTERM during training: finish the current step, save a full checkpoint (the one
    ``resume=`` continues from), stop, and let the runner record ``INTERRUPTED``.  A second signal,
    or one outside the training loop (loading, saving), raises :class:`~sllmx.errors.Interrupted`
    at once.  With several processes every rank stops at the same step (any rank's signal counts).

    Use as a context manager around the run: it installs the handlers (main thread only) and puts
    the previous ones back.  It also logs the train loss at every checkpoint, so that a resumed run
    can give the mean train loss of all its steps.
    """

    SIGNALS = ("SIGINT", "SIGTERM")
    #: a second SIGTERM within this many seconds is the same request (scancel reaches the process directly
    #: and through torchrun's agent), not a demand to stop at once
    REPEAT_S = 5.0

    def __init__(self, runtime: Optional[Runtime] = None):
        self.runtime = runtime or Runtime()
        self.signal: Optional[str] = None  # the first signal received
        self.in_loop = False
        self.step: Optional[int] = None
        self._at = 0.0  # when the first signal came (time.monotonic)
        self._previous: dict[int, Any] = {}
        #: a signal whose Interrupted was raised outside the training loop: if the code it landed in swallowed it
        #: (``datasets``' fingerprinting catches everything, bare ``except:``), :meth:`check` raises it again
        self.unhonoured: Optional[str] = None

    def __enter__(self) -> "GracefulStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        import logging
        import signal

        from sllmx.errors import Interrupted

        import time

        name = signal.Signals(signum).name
        if self.signal == "SIGTERM" and name == "SIGTERM" and time.monotonic() - self._at < self.REPEAT_S:
            return  # the same SIGTERM again: SLURM signals every process and torchrun forwards it once more
        if self.signal is not None or not self.in_loop:
            self.unhonoured = self.signal or name
            raise Interrupted(self.signal or name, self.step)
        self.signal, self._at = name, time.monotonic()
        logging.getLogger("sllmx").warning("%s: stopping after this step and saving a checkpoint for resume= "
                                           "(send it again to stop at once)", name)

    def check(self) -> None:
        """Raise :class:`~sllmx.errors.Interrupted` again for a signal that came outside the training loop and was
        swallowed by the code it landed in (the run went on as if it had not come).

        Raises:
            Interrupted: when such a signal came.
        """
        from sllmx.errors import Interrupted

        if self.unhonoured is not None:
            raise Interrupted(self.unhonoured, self.step)

    def on_train_begin(self, args, state, control, **kwargs):
        self.check()  # a signal during loading or data preparation that a library swallowed
        self.in_loop, self.step = True, state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        stop = self.signal is not None
        if self.runtime.world_size > 1:  # one decision for every rank, or they would wait for each other
            from sllmx.runtime import gather

            names = [n for n in gather(self.signal, self.runtime) if n]
            self.signal, stop = (names[0] if names else None), bool(names)
        if stop:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            # a logging window ends at every checkpoint, so the train loss of a resumed run's earlier steps
            # is in the log history it restores (sllmx.training._whole_run_loss)
            control.should_log = True

    def on_train_end(self, args, state, control, **kwargs):
        self.in_loop = False


class NonFiniteStop(TrainerCallback):
    """Stop training at the step whose loss or gradients are not finite, instead of training on.

    Before each optimizer step the trainable parameters' gradients are summed (a NaN or inf
    anywhere makes the sum non-finite; one pass over the gradients, about 1% of a CPU step for
    full fine-tuning of a 135M model); with several processes any rank's finding stops every rank
    (FSDP ranks hold different gradient shards).  At each logging step the logged loss is checked
    too.  With fp16 (a ``GradScaler``) inf gradients are routine, the scaler skips those steps and
    lowers its scale, so only the logged loss is checked; under DeepSpeed the gradients are not on
    the parameters and likewise only the loss is.

    Args:
        runtime: the run's processes (one decision for all).  scaled: fp16 training with a grad scaler.

    Raises:
        FloatingPointError: ``loss or gradients not finite at step k`` (k counts from 1: the step
            being taken), which the runner records as ``FAIL`` with the last checkpoint kept.
    """

    def __init__(self, runtime: Optional[Runtime] = None, scaled: bool = False):
        self.runtime = runtime or Runtime()
        self.scaled = scaled

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        if self.scaled:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        bad = bool(grads) and not bool(torch.isfinite(torch.stack([g.detach().float().sum() for g in grads]).sum()))
        if self.runtime.world_size > 1:
            from sllmx.runtime import gather

            bad = any(gather(bad, self.runtime))
        if bad:
            raise FloatingPointError(f"loss or gradients not finite at step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        import math

        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise FloatingPointError(f"train loss {loss} at step {state.global_step}")
