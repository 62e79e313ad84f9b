"""The manifest tests' helpers live in ``deft_manifest_support`` beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # importable whatever pytest's import mode
    sys.path.insert(0, _HERE)
