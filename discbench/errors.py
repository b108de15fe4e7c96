"""User-facing errors: one clear line, a non-zero exit, nothing half-written."""


class DiscbenchError(Exception):
    """An error caused by input the user can fix; the CLI prints its message as one line and exits with 2."""


class TrainingFailure(DiscbenchError):
    """A seed that trained and then failed (as opposed to a refusal, a ``DiscbenchError`` raised before training on
    input the user can fix): its failure record (``<hash>__seed<k>.failed``) says why, for ``discbench status``."""


def leaves_failure_record(exc: BaseException) -> bool:
    """Whether ``exc`` ends a seed that a failure record should describe: a crash or a ``TrainingFailure``. A
    refusal (any other ``DiscbenchError``: a configuration, plugin, backbone or dataset that cannot run) leaves
    nothing behind; its one line says what to fix."""
    return not isinstance(exc, DiscbenchError) or isinstance(exc, TrainingFailure)


class NonFiniteLossError(TrainingFailure):
    """A loss term became NaN or infinite during training."""

    def __init__(self, term, step: int, epoch: int, value: float):
        """``term``: the ``discbench.keys.Term`` that is not finite."""
        self.term, self.step, self.epoch, self.value = term, step, epoch, value
        where = f"term '{term.name}'" + (f" of {term.place}" if term.place else "")
        super().__init__(
            f"non-finite loss: {where} is {value} at epoch {epoch}, step {step}; "
            f"lower the learning rate or the term's weight (--set ...), or check the plugin"
        )


class NonFiniteWeightsError(TrainingFailure):
    """A parameter or buffer of the trained system is NaN or infinite at the end of an epoch."""

    def __init__(self, name: str, epoch: int):
        self.name, self.epoch = name, epoch
        super().__init__(
            f"non-finite weights: '{name}' is not finite after epoch {epoch + 1}; no record is written; lower the "
            f"learning rate or the loss weights (--set ...)"
        )
