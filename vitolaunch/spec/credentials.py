"""Telling a credential from a setting, so that none is ever written into an sbatch script or an MLflow tag.

Site settings (`resources.env`, `setup`, `sbatch_extra`, cluster profiles) are rendered into batch scripts and
kept on every trial's run record; a secret there would be readable by anyone who can read the log folder or the
tracking server. Credentials reach jobs the other way: sbatch exports the environment of the shell that ran
`vitolaunch`, and the AWS SDK also reads ~/.aws. Detection is by name and by shape; it errs on the side of refusing,
and the message says where the value belongs instead.
"""

from __future__ import annotations

import re

# Words of a variable name (split on '_') that name a secret. `PWD` is the working directory, not a password.
_SECRET_WORDS = {"SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASS", "TOKEN", "TOKENS", "CREDENTIAL", "CREDENTIALS",
                 "APIKEY", "PASSPHRASE"}
_SECRET_PAIRS = {("ACCESS", "KEY"), ("API", "KEY"), ("PRIVATE", "KEY"), ("SESSION", "KEY"), ("SECRET", "KEY"),
                 ("AUTH", "KEY"), ("CLIENT", "SECRET")}

_SECRET_SHAPES = [
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}")),
    ("a GitHub token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("an OpenAI-style API key", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    ("a JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a password in a URL", re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")),
]
# An AWS secret access key: 40 characters of base64 with upper, lower and digits (paths have '.', '-' or '_').
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# `export NAME=...` or `NAME=...` in a setup line: the name is judged like an env key.
_ASSIGNMENT = re.compile(r"(?:^|[\s;&|(])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")

WHERE_CREDENTIALS_GO = (
    "Credentials are never settings: they would be written into the sbatch script and the MLflow record. "
    "Export it in the shell that runs vitolaunch (jobs inherit that environment), or use ~/.aws/credentials for S3."
)


def secret_name(name: str) -> bool:
    """True when an environment variable named `name` holds a secret (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...)."""
    words = [word for word in re.split(r"[_\W]+", name.upper()) if word]
    if any(word in _SECRET_WORDS for word in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def secret_shape(text: str) -> str | None:
    """What kind of credential `text` contains (e.g. 'an AWS access key id'), or None."""
    for kind, pattern in _SECRET_SHAPES:
        if pattern.search(text):
            return kind
    for match in _AWS_SECRET.finditer(text):
        token = match.group(0)
        if not token.startswith("/") and all(re.search(c, token) for c in ("[A-Z]", "[a-z]", "[0-9]")):
            return "an AWS secret access key"
    return None


def credential_in_line(line: str) -> str | None:
    """Why a shell line carries a credential (an assignment to a secret name, or a secret-shaped value), or None."""
    for match in _ASSIGNMENT.finditer(line):
        if secret_name(match.group(1)):
            return f"sets {match.group(1)}, a credential's name"
    kind = secret_shape(line)
    return f"contains what looks like {kind}" if kind else None
