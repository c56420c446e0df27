"""Subcommands of `copilot-fleet`: each module exposes `register(subparsers)`.

Modules must stay cheap to import (no pulumi or copilot imports at module level): every invocation imports
them all to build the help text.
"""
