"""Print pip constraints pinning every direct dependency to the floor pyproject.toml declares.

``make test-lowest`` installs the package under these constraints, so each ``>=`` floor is
one the tests have run on. Usage: ``python ci/lowest.py [EXTRA ...] > constraints.txt``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += [r for r in project["optional-dependencies"][extra] if not r.startswith("polars-embed")]
for requirement in requirements:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(>=|==)\s*([^,;\s]+)", requirement.strip())
    if not m:
        sys.exit(f"ci/lowest.py: cannot read a floor in {requirement!r}")
    print(f"{m.group(1)}=={m.group(4)}")
