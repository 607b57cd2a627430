"""The export's errors, shared by the format table and the exporters."""


class ExportError(Exception):
    """An export that cannot go on; the message says what was wrong and what to do."""


class MissingDependency(ExportError):
    """An optional runtime/converter is not installed; the message is the install hint."""
