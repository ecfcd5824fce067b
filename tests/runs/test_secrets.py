"""Secrets found by key, by URL and by value, and replaced wherever they appear."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from graphledger.ledger.events import canonical_json
from graphledger.runs import RunRequest
from graphledger.runs.checkpoint import scrubbed_config, scrubbed_metadata, scrubber_of, scrubbing
from graphledger.runs.secrets import (
    REDACTED,
    Scrubber,
    is_secret_key,
    merge_secrets,
    split_secrets,
    url_passwords,
    without_url_passwords,
)
from graphledger.runs.serialize import encode

SECRET_KEYS = [
    "api_key", "apiKey", "APIKey", "api-key", "x-api-key", "X-API-Key", "openai_api_key", "openaiApiKey", "OPENAI_API_KEY",
    "anthropicApiKey", "apikey", "token", "Token", "access_token", "accessToken", "AccessToken", "sessionToken",
    "session_token", "refresh_token", "refreshToken", "id_token", "auth_token", "github_token", "X-Auth-Token",
    "access_tokens", "refresh_tokens", "secret", "client_secret", "clientSecret", "aws_secret_access_key", "secret_key",
    "password", "Password", "db_password", "dbPassword", "passwd", "pwd", "PWD", "passphrase", "keyPassphrase", "passcode",
    "bearer", "Bearer", "bearer_token", "auth", "Auth", "basic_auth", "proxyAuth", "authorization", "Authorization",
    "Proxy-Authorization", "cookie", "Cookie", "cookies", "Set-Cookie", "session_cookie", "credentials", "credential",
    "aws_credentials", "gcpCredentials", "creds", "private_key", "privateKey", "PRIVATE_KEY", "ssh_key", "access_key",
    "aws_access_key", "signing_key", "encryption_key", "jwt", "auth_header", "authorization_header",
]
INNOCENT_KEYS = [
    "max_tokens", "maxTokens", "tokens", "token_count", "tokenCount", "token_limit", "tokenizer", "input_tokens",
    "output_tokens", "total_tokens", "tokens_used", "author", "authors", "author_name", "authorName", "authority",
    "authored_at", "secretary_name", "model", "model_name", "user_id", "thread_id", "run_id", "key", "cache_key",
    "sort_key", "primary_key", "keyboard", "monkey", "keys", "session_id", "sessionId", "passage", "compass", "bypass",
    "temperature", "cookbook", "", "_", "123",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_keys_that_name_a_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", INNOCENT_KEYS)
def test_keys_that_do_not(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("text", "passwords", "redacted"),
    [
        ("postgresql://u:secret@h/db", ["secret"], "postgresql://u:[redacted]@h/db"),
        ("see https://bob:p%40ss@example.com:8443/x?y=1 now", ["p%40ss"], "see https://bob:[redacted]@example.com:8443/x?y=1 now"),
        ("redis://:onlypass@cache:6379/0", ["onlypass"], "redis://:[redacted]@cache:6379/0"),
        ("a=postgres://a:1@h b=mysql://b:2@i", ["1", "2"], "a=postgres://a:[redacted]@h b=mysql://b:[redacted]@i"),
        ("https://example.com/a:b@c", [], "https://example.com/a:b@c"),  # a path, not user-info
        ("https://user@example.com", [], "https://user@example.com"),
        ("mailto:someone@example.com", [], "mailto:someone@example.com"),
        ("http://host:8080/path", [], "http://host:8080/path"),
    ],
)
def test_url_passwords(text: str, passwords: list[str], redacted: str) -> None:
    assert url_passwords(text) == passwords
    assert without_url_passwords(text) == redacted


def test_split_finds_keys_lists_and_urls_and_merge_puts_them_back() -> None:
    value = {
        "configurable": {
            "model": "m", "max_tokens": 5, "openaiApiKey": "sk-a",
            "providers": [{"name": "x", "api_key": "sk-b"}, {"name": "y"}, {"name": "z", "auth": {"user": "u", "pwd": "p"}}],
            "db_url": "postgresql://u:secret@h/db", "plain_url": "https://example.com", "empty_token": "",
        },
        "tags": ["t"],
    }
    kept, secrets, paths = split_secrets(value, "config")
    assert paths == [
        "config.configurable.openaiApiKey", "config.configurable.providers[0].api_key",
        "config.configurable.providers[2].auth", "config.configurable.db_url",
    ]
    configurable = kept["configurable"]
    assert configurable["openaiApiKey"] == REDACTED and configurable["providers"][0] == {"name": "x", "api_key": REDACTED}
    assert configurable["providers"][2] == {"name": "z", "auth": REDACTED}
    assert configurable["db_url"] == "postgresql://u:[redacted]@h/db" and configurable["plain_url"] == "https://example.com"
    assert configurable["max_tokens"] == 5 and configurable["empty_token"] == ""
    assert "sk-a" not in json.dumps(kept) and "secret" not in json.dumps(kept).replace("[redacted]", "")
    json.dumps(secrets)  # stored as JSON in run_secrets
    assert merge_secrets(kept, secrets) == value
    assert split_secrets({"a": 1}) == ({"a": 1}, None, [])


def test_a_request_redacts_config_context_and_metadata_and_scrubs_known_values_from_its_input() -> None:
    request = RunRequest.parse({
        "assistant_id": "demo",
        "input": {"messages": [{"role": "user", "content": "my key is sk-config-1 and my pass is hunter22"}]},
        "config": {"configurable": {"openai_api_key": "sk-config-1"}, "metadata": {"bearer": "tok-config-meta"}},
        "context": {"db": {"password": "hunter22"}, "dsn": "postgres://u:ctx-pass@h/db"},
        "metadata": {"session_token": "sess-run-meta", "owner": "ann"},
    })
    request.know({"password": "thread-meta-pw"})
    recorded = request.record()
    text = canonical_json(recorded)
    for value in ("sk-config-1", "hunter22", "tok-config-meta", "ctx-pass", "sess-run-meta"):
        assert value not in text
    assert recorded["input"]["messages"][0]["content"] == "my key is [redacted] and my pass is [redacted]"
    assert recorded["redacted"] == [
        "config.configurable.openai_api_key", "config.metadata.bearer", "context.db.password", "context.dsn",
        "metadata.session_token",
    ]
    assert recorded["metadata"] == {"session_token": REDACTED, "owner": "ann"}
    again = RunRequest.recorded(recorded, json.loads(json.dumps(request.secrets)))
    assert again.config["configurable"]["openai_api_key"] == "sk-config-1"
    assert again.config["metadata"]["bearer"] == "tok-config-meta"
    assert again.context == {"db": {"password": "hunter22"}, "dsn": "postgres://u:ctx-pass@h/db"}
    assert again.metadata == {"session_token": "sess-run-meta", "owner": "ann"}
    scrubber = again.scrubber()
    assert scrubber is not None and "thread-meta-pw" in scrubber.values and "ctx-pass" in scrubber.values


def test_a_request_without_secrets_has_no_scrubber() -> None:
    request = RunRequest.parse({"assistant_id": "demo", "config": {"configurable": {"max_tokens": 3}}})
    assert request.scrubber() is None and "redacted" not in request.record() and request.secrets == {}


@pytest.mark.parametrize(
    "secret",
    ["sk-plain-123", 'quo"te\\back', "new\nline\ttab", "ünïcødé-秘密", "ctl\x01char", "</script>", "a/b+c=="],
)
def test_the_scrubber_matches_a_value_as_it_is_encoded_in_json(secret: str) -> None:
    scrubber = Scrubber([secret])
    chunk = {"messages": [AIMessage(content=f"the key: {secret}!", id="m1")], secret: [1, {"x": secret}], "n": 1.5}
    data = encode(chunk)
    assert scrubber.found(data)
    scrubbed = scrubber.text(data)
    assert secret not in json.dumps(json.loads(scrubbed)) and secret not in scrubbed
    value = json.loads(scrubbed)
    assert value["messages"][0]["content"] == "the key: [redacted]!" and value[REDACTED] == [1, {"x": REDACTED}]
    assert scrubbed == canonical_json(value)


def test_the_scrubber_leaves_other_text_as_it_is() -> None:
    scrubber = Scrubber(["sk-abcdef"])
    data = encode({"content": "nothing here", "tokens": [1, 2]})
    assert scrubber.text(data) is data
    assert Scrubber.of(["abc", ""]) is None  # too short to scrub by value


@dataclass
class Box:
    note: str
    count: int


def test_the_scrubber_replaces_values_in_objects_and_keeps_what_it_does_not_change() -> None:
    scrubber = Scrubber(["sk-object-1"])
    message = AIMessage(content="echo sk-object-1", id="m", additional_kwargs={"k": ["sk-object-1"]})
    state = {"messages": [message], "box": Box("has sk-object-1", 2), "plain": ("a", 1)}
    scrubbed = scrubber.object(state)
    assert scrubbed["messages"][0].content == "echo [redacted]" and scrubbed["messages"][0].additional_kwargs == {"k": ["[redacted]"]}
    assert scrubbed["messages"][0].id == "m" and message.content == "echo sk-object-1"  # a copy
    assert scrubbed["box"] == Box("has [redacted]", 2)
    assert scrubbed["plain"] is state["plain"]
    untouched = {"messages": [AIMessage(content="fine", id="x")]}
    assert scrubber.object(untouched) is untouched


def test_what_the_checkpointer_stores_has_no_secret() -> None:
    run_id = "5b0f1c3e-8c4b-4f57-9f3e-0a1b2c3d4e5f"
    config: Any = {
        "configurable": {"thread_id": "t", "run_id": run_id, "openai_api_key": "sk-cp-1", "dsn": "postgres://u:cp-pw@h/d", "n": 2},
        "metadata": {"accessToken": "tok-cp-2", "note": "uses ctx-cp-3"},
    }
    from uuid import UUID

    with scrubbing(UUID(run_id), Scrubber(["ctx-cp-3"])):
        scrubber = scrubber_of(config)
        assert scrubber is not None and set(scrubber.values) >= {"sk-cp-1", "tok-cp-2", "ctx-cp-3"}
        stored = scrubbed_config(config, scrubber)
        metadata = scrubbed_metadata({"source": "loop", "step": 1, "openai_api_key": "sk-cp-1", "echo": "sk-cp-1!"}, scrubber)  # type: ignore[typeddict-unknown-key]
    text = json.dumps([stored, metadata])
    for value in ("sk-cp-1", "cp-pw", "tok-cp-2", "ctx-cp-3"):
        assert value not in text
    assert stored["configurable"]["thread_id"] == "t" and stored["configurable"]["n"] == 2
    assert config["configurable"]["openai_api_key"] == "sk-cp-1"  # the graph's own config is left alone
    assert scrubber_of({"configurable": {"run_id": run_id}}) is None  # the block ended


class LoginFailed(Exception):
    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


def test_the_scrubber_replaces_values_in_a_copy_of_an_exception() -> None:
    scrubber = Scrubber(["sk-error-1"])
    error = LoginFailed("no login with sk-error-1", key="sk-error-1")
    scrubbed = scrubber.object({"__error__": error})["__error__"]
    assert isinstance(scrubbed, LoginFailed) and str(scrubbed) == "no login with [redacted]" and scrubbed.key == "[redacted]"
    assert str(error) == "no login with sk-error-1"  # the graph's own is left alone
    plain = RuntimeError("nothing secret")
    assert scrubber.object(plain) is plain
