"""Print a version pinned in pyproject.toml, for the Dockerfile's RUN steps (stdlib only).

    python3 docker/pins.py torch               -> [tool.liar-export] torch
    python3 docker/pins.py llama-cpp-python    -> the ==VERSION of that [project] dependency
"""

import re
import sys
import tomllib

name = sys.argv[1]
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
if name == "torch":
    version = project["tool"]["liar-export"]["torch"]
else:
    pins = [m.group(1) for d in project["project"]["dependencies"]
            if (m := re.fullmatch(rf"{re.escape(name)}==([^;\s]+)", d.strip()))]
    if len(pins) != 1:
        sys.exit(f"pyproject.toml: expected one {name}==VERSION dependency, found {len(pins)}")
    version = pins[0]
if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version):
    sys.exit(f"pyproject.toml: {name} pin {version!r} is not a version")
print(version)
