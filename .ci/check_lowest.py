"""Fail unless every package pinned in the constraints file (argument) is imported at its pinned
version from this environment (the lowest-versions CI run layers on the newest environment)."""

import importlib.metadata
import sys
from pathlib import Path

wrong = []
for line in Path(sys.argv[1]).read_text().splitlines():
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = (part.strip() for part in line.split("=="))
    found = importlib.metadata.version(name)
    if found != version:
        wrong.append(f"{name} {found} (pinned {version})")
if wrong:
    sys.exit("lowest environment is not the pinned one: " + ", ".join(wrong))
print(f"lowest environment: {sys.argv[1]} holds")
