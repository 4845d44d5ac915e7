"""Errors mnv2 raises for bad input. The CLI prints these without a traceback and exits non-zero."""


class Mnv2Error(Exception):
    """Base class of the errors caused by user input (arguments, files, data), not by bugs."""


class ConfigError(Mnv2Error, ValueError):
    """An argument or configuration value is invalid; the message names the bad value."""
