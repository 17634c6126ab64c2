"""Exit codes and the one exception type that turns bad input into one clear line.

DESIGN.md: 0 done, 2 bad input/config, 3 preflight failed, 75 checkpointed after a stop signal.
"""

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_PREFLIGHT = 3
EXIT_STOPPED = 75  # EX_TEMPFAIL: the batch script requeues on it


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix; the CLI prints it and exits 2."""

    exit_code = EXIT_BAD_INPUT


class PreflightError(UserError):
    exit_code = EXIT_PREFLIGHT
