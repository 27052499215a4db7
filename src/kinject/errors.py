"""The one exception type users see: the CLI prints its message as one line and exits 2."""


class KinjectError(Exception):
    """Bad input or an unusable environment, described so the user knows what to do."""
