"""sllmx: experiments for fine-tuning small LLMs.

Extension points are in :mod:`sllmx.hookspecs`; the objects plugins return are in
:mod:`sllmx.interfaces`; one run, top to bottom, is :func:`sllmx.run.run`.
"""

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations: ``@sllmx.hookimpl def sllmx_methods(): ...``
hookimpl = pluggy.HookimplMarker("sllmx")
