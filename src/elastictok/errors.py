"""The one exception type users see: its message is a single line saying what is wrong."""


class ElasticTokError(ValueError):
    """Bad input, configuration or file. The CLI prints ``error: <message>`` and exits 2."""
