"""The errors every layer raises, and their exit codes: the bottom of llmkit's layers (it imports nothing of ours).

- `ConfigError` (and `DataError`, `HubError` for input faults): the user's input is wrong; exit code 2. The message
  names the parameter (`temperature`, `model.n_layer`) and the fix; the command line maps parameter names to its
  flags (`--temperature`) where a flag set it.
- `EnvironmentFault` (and `HubError` for Hub faults): the input is fine, the environment failed (the Hub down or
  answering 5xx, a timeout, a full disk); exit code 1.
- `RunError`: a run that cannot go on (a lost process, a signal, a NaN loss); exit code 1, or 128 + the signal.
All are one line whatever they quote. `LLMKIT_DEBUG=1` makes the command line print the traceback after the line.
"""

from __future__ import annotations


class OneLineError(Exception):
    """An error whose message is one line whatever it quotes: a line break in a key, value or file name the user gave
    is shown escaped (`\\n`), so the message stays the one line the CLI promises. `exit_code` is the command's."""

    exit_code = 2

    def __init__(self, message: object = "", *, exit_code: int | None = None):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(OneLineError, ValueError):
    """A bad setting or argument: the message names the parameter and the fix (exit code 2)."""


class ParameterError(ConfigError):
    """A bad value of one parameter of a library call, named as the function names it (`temperature must be >= 0`):
    a front end renames `parameter` to what its user typed (`--temperature`, `sample.temperature`). The message
    follows the name; `{param}` in it stands for the name again (`pass {param} 32 or less`)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}{message.replace('{param}', parameter)}")
        self.parameter, self.detail = parameter, message

    def named(self, name: str) -> ConfigError:
        return ConfigError(f"{name}{self.detail.replace('{param}', name)}")


class EnvironmentFault(OneLineError):
    """The input is fine; something outside it failed (exit code 1): try again, or fix the machine."""

    exit_code = 1


class RunError(OneLineError, RuntimeError):
    """A run that cannot go on for a reason outside the user's input (a lost process, a full disk, a signal, a NaN
    loss): one line, exit code `exit_code` (1, or 128 + the signal)."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message, exit_code=exit_code)


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (its type name when the message is empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
