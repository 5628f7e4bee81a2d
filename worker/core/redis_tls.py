"""TLS for Redis (store and broker), in one place for the app and for `ops/rotate-token-key.py`.

A `rediss://` connection verifies the server's certificate and host name, with the CA and client
certificate the settings name. redis-py and kombu read `ssl_*` options from the URL's query too,
and those win over the code's: `?ssl_cert_reqs=none` silently turns the certificate check off.
Such an override is refused, with one line naming the variable, never obeyed.

Standard library only (redis is imported where a client is built): the rotation script imports
this module without loading the app's settings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

_REQUIRED = frozenset({"required", "cert_required", "ssl.cert_required", "2"})
_FALSE = frozenset({"false", "0", "no", "off", "n", "f", ""})


def weak_tls_override(url: str) -> str | None:
    """Why `url` weakens TLS checks through its query (`ssl_cert_reqs` other than required,
    `ssl_check_hostname` false), or None. Each `;`-separated part is read (sentinel lists)."""
    for part in url.split(";"):
        for name, value in parse_qsl(urlsplit(part.strip()).query, keep_blank_values=True):
            key, val = name.strip().lower(), value.strip().lower()
            if key == "ssl_cert_reqs" and val not in _REQUIRED:
                return f"{name}={value} turns off the server certificate check"
            if key == "ssl_check_hostname" and val in _FALSE:
                return f"{name}={value} turns off the host name check"
    return None


def refuse_weak_tls(url: str) -> str:
    """`url` as it is, or ValueError (a settings validator's message: one line, no URL, so no
    password in it)."""
    why = weak_tls_override(url)
    if why:
        raise ValueError(
            f"{why}; remove it from the URL (for a private CA set REBOOK_REDIS_CA_FILE; "
            "certificates are always verified)"
        )
    return url


def tls_options(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> dict[str, Any]:
    """redis-py options for a `rediss://` URL: the server certificate and host name verified
    (never a silent fallback to no check), with the CA and client certificate given. Empty for
    any other URL."""
    if urlsplit(url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    if cert_file:
        options["ssl_certfile"] = cert_file
    if key_file:
        options["ssl_keyfile"] = key_file
    return options
