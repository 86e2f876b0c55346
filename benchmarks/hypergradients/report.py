"""results.md (stub while developing)."""


def write_report(out):
    pass
