"""The one exception type for bad input from a user."""


class GPTCoreError(ValueError):
    """Bad input: the message is one line that says what is wrong and how to fix it.

    The scripts print it as `error: <message>` and exit with status 2, without a traceback.
    """
