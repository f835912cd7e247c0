"""Whether the config models read their fields' docstrings, decided once per process.

Every setting and CRD field is documented by the docstring under it, and pydantic's
``use_attribute_docstrings`` turns those into field descriptions: ``--help``, the CRD's
``description``s and the reference pages come from them. Reading them is not free:
pydantic finds and tokenizes each model class's source at import, about a tenth of a
sidecar's start-up CPU (bench: podcost), in every opted-in pod, for text a running
sidecar never shows. :func:`runlog_relay.cli.main` calls :func:`skip` for a
``runlog-relay sidecar`` process that will not print ``--help``, before the models are
imported; every other process (the operator, ``crd``, the docs, tests) keeps them.
"""

from __future__ import annotations

import sys

__all__ = ["MODEL_MODULES", "skip", "wanted"]

#: The modules whose models take their descriptions from docstrings.
MODEL_MODULES = ("runlog_relay.config.models", "runlog_relay.config.settings")

_wanted = True


def wanted() -> bool:
    """Read by the model modules at import (``use_attribute_docstrings=wanted()``)."""
    return _wanted


def skip() -> None:
    """Leave the descriptions out of models not imported yet; a no-op once they are, so a
    process never holds models of both kinds."""
    global _wanted
    if not any(name in sys.modules for name in MODEL_MODULES):
        _wanted = False
