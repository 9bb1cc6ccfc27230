"""Users, services and roles: token parsing, and who may call what on a real server."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.common.auth import ANONYMOUS_ADMIN, Principal, TokenBook, current_principal, parse_user_tokens
from services.common.config import ConfigError, Settings
from services.common.metrics import Metrics
from services.common.server import bind_server, build_server

ALICE, BOB, ADMIN, SERVICE = (
    "alice-token-0123456789",
    "bob-token-0123456789",
    "admin-token-0123456789",
    "service-token-0123456789",
)


def test_user_tokens_are_name_token_pairs_and_a_bare_token_is_the_default_user():
    assert parse_user_tokens([f"alice={ALICE}", BOB]) == {ALICE: "alice", BOB: "default"}
    for bad, message in [
        (["alice=short"], "shorter than 16"),
        (["Alice Smith=" + ALICE], "user name"),
        ([f"alice={ALICE}", f"bob={ALICE}"], "share one token"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_user_tokens(bad)
    with pytest.raises(ConfigError, match="SFHQ_SERVICE_TOKENS"):
        TokenBook([f"alice={ALICE}"], [])  # users without service tokens: the services could not talk
    with pytest.raises(ConfigError, match="both a user token and a service token"):
        TokenBook([f"alice={ALICE}"], [ALICE])


def test_roles():
    assert Principal("admin").is_admin and Principal("admin").owns("alice")
    assert (
        not Principal("alice").is_admin
        and not Principal("alice").owns("bob")
        and Principal("alice").owns("alice")
    )
    assert Principal("service", "service").may_call_internal_services
    assert not Principal("alice").may_call_internal_services
    assert not TokenBook([], []).enabled and ANONYMOUS_ADMIN.is_admin  # auth off: one trusted machine


def whoami(_request: bytes, _context: grpc.ServicerContext) -> bytes:
    principal = current_principal()
    return f"{principal.kind}:{principal.name}".encode()


def serve(internal: bool) -> tuple[grpc.Server, str]:
    settings = Settings(auth_tokens=[f"alice={ALICE}", f"admin={ADMIN}"], service_tokens=[SERVICE])
    server = build_server(settings, max_workers=2, metrics=Metrics(CollectorRegistry()), internal=internal)
    handler = grpc.method_handlers_generic_handler(
        "test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = bind_server(server, settings, "127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def ask(address: str, token: str) -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = channel.unary_unary("/test.Who/Am")(
                b"", timeout=5, metadata=[("authorization", f"Bearer {token}")]
            )
            return "OK", reply.decode()
        except grpc.RpcError as error:
            return error.code().name, error.details()


def test_the_servicer_sees_its_caller_and_internal_services_refuse_users():
    public, public_address = serve(internal=False)
    internal, internal_address = serve(internal=True)
    try:
        assert ask(public_address, ALICE) == ("OK", "user:alice")
        assert ask(public_address, SERVICE) == ("OK", "service:service")
        code, details = ask(internal_address, ALICE)
        assert code == "PERMISSION_DENIED" and "internal service" in details
        assert ask(internal_address, ADMIN) == ("OK", "user:admin")
        assert ask(internal_address, SERVICE) == ("OK", "service:service")
        assert ask(internal_address, "not-a-token-at-all")[0] == "UNAUTHENTICATED"
    finally:
        public.stop(None)
        internal.stop(None)
