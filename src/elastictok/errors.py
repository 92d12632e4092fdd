"""The one exception type users see: its message is a single line saying what is wrong."""


class ElasticTokError(ValueError):
    """Bad input, configuration or file. The CLI prints ``error: <message>`` and exits 2."""

    def __init__(self, message: str = "") -> None:
        # one line whatever the names in it hold: a file or field name may contain a newline
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
