"""Where a Client finds the broker's address and its token.

The same places as the tre command line (docs/cli.md): the token is the
argument, else the token file given, else the environment variable of the
client's role (TRE_TOKEN_RESEARCHER, TRE_TOKEN_REVIEWER,
TRE_TOKEN_OUTPUT_CHECKER, TRE_TOKEN_ADMIN: what `tre demo` writes to
tre-demo/tokens.env), else TRE_TOKEN, else the demo's tokens.env in the
working directory. The address is the argument, else TRE_BROKER, else the
TRE_BROKER of the tokens file read, else http://127.0.0.1:8080.
"""

import os

from .errors import TreError

ROLES = ("researcher", "reviewer", "output_checker", "admin")
DEFAULT_BROKER = "http://127.0.0.1:8080"
DEMO_TOKENS = os.path.join("tre-demo", "tokens.env")


def token_var(role):
    """The environment variable holding the token of role."""
    return "TRE_TOKEN_" + role.upper()


def parse_env_file(text):
    """The KEY=VALUE lines of a file such as tokens.env (as `set -a; .
    FILE` would read it), or None when text is not such a file (a bare
    token)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            return None
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise TreError("read token file {}: {}".format(path, e.strerror or e)) from None


def resolve(base_url, token, role, token_file, environ, cwd):
    """The broker's address and the token, from the arguments, the
    environment and the token files, in the order the module describes."""
    if role not in ROLES:
        raise ValueError("role {!r}: one of {}".format(role, ", ".join(ROLES)))
    var = token_var(role)
    file_env = None  # the tokens file read, if any
    if not token and token_file:
        text = _read(token_file)
        file_env = parse_env_file(text)
        if file_env is None:
            token = text.strip()
        else:
            token = file_env.get(var) or file_env.get("TRE_TOKEN")
            if not token:
                raise TreError("token file {} sets neither {} nor TRE_TOKEN".format(token_file, var))
    if not token:
        token = environ.get(var, "").strip() or environ.get("TRE_TOKEN", "").strip()
    if not token:
        demo = os.path.join(cwd, DEMO_TOKENS)
        if os.path.isfile(demo):
            file_env = parse_env_file(_read(demo)) or {}
            token = file_env.get(var)
    if not token:
        raise TreError(
            "no token: pass token= or token_file=, or set {} or TRE_TOKEN "
            "(tre demo writes them to {})".format(var, DEMO_TOKENS))
    if not base_url:
        base_url = environ.get("TRE_BROKER") or (file_env or {}).get("TRE_BROKER") or DEFAULT_BROKER
    base_url = base_url.rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError("base_url {!r} must be an http:// or https:// URL".format(base_url))
    return base_url, token.strip()
