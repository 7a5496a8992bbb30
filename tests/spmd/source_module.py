"""Generated test programs become real modules: the transform reads bytecode and source lines."""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import sys
import tempfile

_DIR = tempfile.mkdtemp(prefix="spmd_fuzz_")
_COUNT = itertools.count()


def import_source(source: str, prefix: str):
    """Write `source` to a new .py file and import it (each call: a new module)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    name = f"{prefix}_{digest}_{next(_COUNT)}"
    path = os.path.join(_DIR, name + ".py")
    with open(path, "w") as fh:
        fh.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
