"""Placeholder: the azure wire format is being written."""


class _Nothing:
    def match(self, path: str) -> bool:
        return False


WIRE = _Nothing()
