"""The one error type the engine raises for bad input."""


class EngineInputError(ValueError):
    """Bad input to the engine. The message names the argument and how to fix it."""
