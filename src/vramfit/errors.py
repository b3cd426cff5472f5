"""The one exception tree of vramfit. Every message says what is wrong and how to fix it.

```
VramfitError(ValueError)
 ├─ UnsupportedArchitecture   model_type not described yet (the message lists the supported ones)
 ├─ InvalidConfig             config.json missing, malformed, or with fields missing or contradictory
 ├─ ModelNotFound             no catalog entry, cached copy, or reachable hub repository for a model id
 ├─ InvalidSetting            impossible workload or parallelism, e.g. kv_heads % tensor != 0
 └─ MissingExtra              an optional dependency (the truth tools, the hub client) is not installed
```
"""

from __future__ import annotations


class VramfitError(ValueError):
    """Base class: the CLI prints its message as one line and exits non-zero."""


class UnsupportedArchitecture(VramfitError):
    """The config names a model_type that vramfit does not describe yet."""


class InvalidConfig(VramfitError):
    """A config.json (or safetensors header) that cannot be read, or whose fields are missing or contradictory."""


class ModelNotFound(VramfitError):
    """A model id that is in neither the catalog, the local cache, nor (when allowed) the hub."""


class InvalidSetting(VramfitError):
    """A workload, precision or parallel layout that cannot run as stated."""


class MissingExtra(VramfitError):
    """An optional dependency is needed for this command; the message gives the pip install line."""
