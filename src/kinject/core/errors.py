"""The one exception type users see: the CLI prints its message as one line and exits 2. Beside
it, the two ways every module puts another message on that line."""


class KinjectError(Exception):
    """Bad input or an unusable environment, described so the user knows what to do."""


def one_line(text: str, limit: int = 300) -> str:
    """Whitespace collapsed to single spaces, cut to `limit` characters with an ellipsis: a
    server's or a stored message, whole, on one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_line(exc: BaseException, limit: int = 300, *, named: bool = False) -> str:
    """A library's exception as a clause of a one-line error: its first line that says something,
    with the next when it ends in a colon (as in "Make sure:"), else its type name; `named` puts
    the type name first. Never fails, whatever the exception holds."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    first = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return one_line(f"{type(exc).__name__}: {first}" if named else first, limit)
