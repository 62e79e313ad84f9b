"""ModelMesh model ids and the names the priority table knows their models by.

ModelMesh Serving gives the model of an InferenceService the id ``<isvc-name>__isvc-<hash>``
(``<hash>``: ten hex digits of the predictor's spec, e.g. ``detector__isvc-6b2eb0b8bf``) and
inference requests name the model by that id. The priority table is keyed by the
InferenceService's name (docs/install.md), so the runtime serves a model under
its id and looks its priority up under the name this module maps the id to.

The rule: an id that is a DNS-1123 label (what InferenceService names are), then ``__isvc-``,
then one or more lower-case letters or digits, maps to that label. Any other id maps to
itself, so a model that ModelMesh was given directly is found under its own id. InferenceService
names never contain ``__``, so the split is unambiguous.
"""

from __future__ import annotations

import re

ISVC_SEPARATOR = "__isvc-"
_ISVC_ID = re.compile(r"(?P<name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)__isvc-[0-9a-z]+")


def priority_name(model_id: str) -> str:
    """The priority table's key for the model ModelMesh calls ``model_id``."""
    match = _ISVC_ID.fullmatch(model_id)
    return match["name"] if match else model_id
