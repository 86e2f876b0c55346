"""Every ```python block of the README and of the docs pages runs as a test, in order, one namespace per page.

A block that starts with ``>>>`` is a doctest: the output it shows is compared with what the code prints.
"""

import doctest

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)],
    patterns=["README.md", "docs/*.md"],
).pytest()
