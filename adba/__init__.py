"""ADBA: Active Directory-based activation with KMS and MAK fallbacks.

The package root stays light (it is imported at every boot by the agent): only the error
family is imported eagerly; everything else lives in its module (``adba.catalog``,
``adba.keys``, ``adba.license``, ``adba.authority``, ``adba.directory``, ...).
"""

from adba.errors import EXIT_CODES, AdbaError

__version__ = "0.1.0"
__all__ = ["EXIT_CODES", "AdbaError", "__version__"]
