"""What is safe to log: config values and URLs with secrets hidden (API keys, tokens, passwords)."""

from __future__ import annotations

import os
import re

SECRET_WORDS = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential|auth)", re.IGNORECASE)


def secret_values() -> list[str]:
    """Values of environment variables whose names say they hold a secret (API keys, tokens, passwords)."""
    return [v for k, v in os.environ.items() if SECRET_WORDS.search(k) and len(v) >= 8]


def redact(key: str, value: str) -> str:
    """A config value safe to log: secret-named keys, known secret values and URL passwords are hidden."""
    if SECRET_WORDS.search(key.rsplit(".", 1)[-1]) and value not in ("None", "null", ""):
        return "***"
    for secret in secret_values():
        value = value.replace(secret, "***")
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", value)  # user:password@host
