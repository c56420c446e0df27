"""A deterministic OpenAI-compatible model endpoint for tests: Chat Completions and Responses, no real model.

Run it: `python -m copilot_fleet.testmodel --host 127.0.0.1 --port 0 [--api-key-file FILE]`, or in-process with
`serve(host, port, api_key)`. The command language is documented in `commands.py` and docs/test-model.md.
"""

from copilot_fleet.testmodel.commands import MARKER, MAX_SLEEP_SECONDS, Answer, answer
from copilot_fleet.testmodel.keys import ApiKeyError, load_api_key
from copilot_fleet.testmodel.server import DEFAULT_MODEL, RequestRecord, TestModelServer, serve

__all__ = [
    "DEFAULT_MODEL",
    "MARKER",
    "MAX_SLEEP_SECONDS",
    "Answer",
    "ApiKeyError",
    "RequestRecord",
    "TestModelServer",
    "answer",
    "load_api_key",
    "serve",
]
