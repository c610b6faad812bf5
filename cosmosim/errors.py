"""The one exception type for bad user input.

Anything a user can get wrong (a file, a field, a flag) raises `InputError` with a message that
names the thing, the field and what was expected. The CLI prints that message on one line and
exits with code 2; library callers (notebooks, sweeps) can catch it.
"""


class InputError(ValueError):
    """Bad user input: a missing or malformed file, an unknown name, an out-of-range value."""
