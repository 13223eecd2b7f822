"""tsearch.names: the one URI masker, on every case the three it replaced handled."""

from __future__ import annotations

import pytest

from tsearch.names import mask_uri


@pytest.mark.parametrize("uri,masked,stripped", [
    # A password: shown masked (logs, exports), or dropped (an unauthenticated probe, the report).
    ("http://alice:s3cret@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000",
     "http://127.0.0.1:5000"),
    ("https://alice:s3cret@mlflow.example/api?x=1", "https://alice:***@mlflow.example/api?x=1",
     "https://mlflow.example/api?x=1"),
    # A lone user part may itself be a token.
    ("https://tok3n@mlflow.example", "https://***@mlflow.example", "https://mlflow.example"),
    # Any scheme, e.g. a database URI; an empty password is still a password field.
    ("postgresql+psycopg2://u:pw@db:5432/mlflow", "postgresql+psycopg2://u:***@db:5432/mlflow",
     "postgresql+psycopg2://db:5432/mlflow"),
    ("http://alice:@host", "http://alice:***@host", "http://host"),
    # An unescaped "@" in the password: the userinfo ends at the authority's last "@".
    ("http://alice:p@ss@host:5000/x", "http://alice:***@host:5000/x", "http://host:5000/x"),
])
def test_userinfo_in_the_authority_is_hidden(uri, masked, stripped):
    assert mask_uri(uri) == masked
    assert mask_uri(uri, strip=True) == stripped


@pytest.mark.parametrize("uri", [
    "sqlite:////abs/path/mlflow.db", "http://127.0.0.1:5000", "databricks://profile",
    "http://host/path/user@x", "http://host?to=a@b", "http://host#a@b",  # "@" past the authority
])
def test_uris_without_userinfo_are_left_as_they_are(uri):
    assert mask_uri(uri) == uri and mask_uri(uri, strip=True) == uri
