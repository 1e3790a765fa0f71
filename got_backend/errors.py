"""The one error family of the pack: every error raised for input it cannot use derives from GoTError.

A GoTError's message says what is wrong, where, and how to fix it; the command line and the nodes show it as
that message. Any other exception is a bug and is shown with its traceback.
"""


class GoTError(ValueError):
    """Input (a prompt, a chain, a model file, a setting) that GoT cannot use; the message says how to fix it."""
