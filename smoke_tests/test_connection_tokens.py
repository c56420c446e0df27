"""Check 3 (every pattern) and the token half of check 4 (per-user): the servers demand their connection token.
And per server: the connection this project opens to it has TCP_NODELAY.

Bare SDK clients, not the fleet client: this is about the servers, and an application bug cannot hide it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest


def test_connection_token_required(server, raw_sdk, aio, auth_failure: Callable[..., bool],
                                   refusal_text: Callable[[str, BaseException], str]) -> None:
    """connection tokens: a missing or wrong token is refused, the right one accepted"""
    if server.token is None:
        pytest.fail(f"the target gives no connection token for {server.id}: this server accepts any client "
                    "(set COPILOT_CONNECTION_TOKEN on it and put it in the target)")
    accepted = aio.run(raw_sdk.refusal(server.address, server.token))
    if accepted is not None:
        what = refusal_text(server.address, accepted)
        pytest.fail(f"{server.id} refused its own token from the target: {what}" if auth_failure(accepted)
                    else f"{server.id}: the target's token could not be tried: {what}")
    for label, token in (("no token", None), ("a wrong token", secrets.token_hex(16))):
        refused = aio.run(raw_sdk.refusal(server.address, token))
        assert refused is not None, f"{server.id} accepted a client with {label}"
        assert auth_failure(refused), (
            f"{server.id} turned away a client with {label}, but not with AUTHENTICATION_FAILED (-32002): "
            f"{refusal_text(server.address, refused)}"
        )


@pytest.mark.applies(isolation=("per-user",))
def test_user_token_opens_only_own_server(target, users, raw_sdk, aio, auth_failure, refusal_text) -> None:
    """per-user tokens: each user's token opens their own server and not the other's"""
    a, b = users
    for owner, other in ((a, b), (b, a)):
        own_token, other_server = target.token_for(owner), target.users[other]
        assert own_token is not None and own_token != target.token_for(other), (
            f"users {owner!r} and {other!r} share a connection token: per-user servers need one each"
        )
        own = aio.run(raw_sdk.refusal(target.users[owner], own_token))
        assert own is None, (f"{owner}'s own server {target.users[owner]} did not accept their token: "
                             f"{refusal_text(target.users[owner], own)}")
        refused = aio.run(raw_sdk.refusal(other_server, own_token))
        assert auth_failure(refused), (
            f"{other}'s server {other_server} did not refuse {owner}'s token with AUTHENTICATION_FAILED: "
            f"{refused!r}"
        )


def test_connection_without_nagle(server, raw_sdk, aio) -> None:
    """connections: TCP_NODELAY on the connection (no delayed-ACK wait on every request)"""
    from copilot_fleet.nodelay import client_nodelay, nodelay_problem

    client = aio.run(raw_sdk.connect(server.address, server.token))
    state = client_nodelay(client)
    assert state is True, (
        f"the connection to {server.id} has Nagle's algorithm on ({'cannot be read' if state is None else 'off'}): "
        f"every request waits for a delayed ACK; {nodelay_problem() or 'made outside copilot_fleet.nodelay'}"
    )
