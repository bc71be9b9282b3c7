"""Errors a user can cause and fix.

The command line prints these as one message, without a traceback, and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input data: the message names the file, tissue or gene and the fix."""


class ConfigError(InputError):
    """A malformed configuration file: the message names the key and the file."""


class TrainingError(Exception):
    """Training could not go on; the message names tissue, cluster, replicate, λ and epoch."""
