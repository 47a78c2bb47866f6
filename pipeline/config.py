"""The config schema lives in ``contract.config``; this name stays for ``pipeline/components.py``
until its import is renamed (another branch owns that file)."""
from contract.config import parse_config  # noqa: F401
