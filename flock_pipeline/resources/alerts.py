"""Alerts to a webhook: the message one alert posts, and the post itself.

One JSON body serves both common chat webhooks: Slack's incoming webhooks read `text`, Discord's read `content`;
`flock` holds the same facts as fields for any other receiver. A body names the network, the netuid, the
validator's (public) hotkey, the epoch, the condition and a short reason, and never a secret: the webhook's URL,
tokens, passwords and credentials in URLs are replaced by *** wherever a reason quotes them.

A post never raises: it returns None when the webhook took it, else what went wrong (an HTTP status, a refused
connection, a timeout), which the caller records. `AlertSettings` are read from the environment by
`alert_settings` (environment.py), checked there.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

POST_TIMEOUT_S = 5.0  # a sensor tick must stay short; a webhook that takes longer counts as failed
MAX_TEXT = 1900  # Discord refuses `content` over 2000 characters
MAX_REASON = 600
DEFAULT_MIN_INTERVAL_S = 3600
DEFAULT_EPOCHS = 3

# Variables whose whole value is a secret, and variables holding a URL whose password is one.
SECRET_VARIABLES = ("FLOCK_ALERT_WEBHOOK", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "BT_WALLET_PASSWORD")
URL_VARIABLES = ("FLOCK_STORE", "FLOCK_DAGSTER_POSTGRES_URL", "FLOCK_CELERY_BROKER", "FLOCK_CELERY_BACKEND")
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][\w+.-]*://)[^/\s@'\"]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{10,}")


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and how often. `webhook` empty: alerts are off. `repr` never shows the webhook."""

    webhook: str = field(default="", repr=False)
    min_interval_s: int = DEFAULT_MIN_INTERVAL_S  # one post per condition (and epoch) per this many seconds
    epochs: int = DEFAULT_EPOCHS  # the N of "weights not applied / no commitments for N epochs"
    network: str = "local"
    netuid: int = 96

    @property
    def enabled(self) -> bool:
        return bool(self.webhook)


def check_webhook(url: str) -> str | None:
    """Why `url` cannot be a webhook (None: it can). The answer never quotes the URL: it is a secret."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL (the value is not shown: it is a secret)"
    return None


def scrub(text: str) -> str:
    """`text` with every secret of the environment, any URL's credentials, bearer tokens and Hugging Face tokens
    replaced by ***."""
    secrets = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    for name in URL_VARIABLES:
        try:
            secrets.append(urlsplit(os.environ.get(name, "")).password or "")
        except ValueError:
            continue
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return _HF_TOKEN.sub("***", _BEARER.sub(r"\1***", text))


def alert_body(settings: AlertSettings, condition: str, reason: str, epoch: int | None, hotkey: str) -> dict:
    """The JSON body of one alert (Slack `text`, Discord `content`, the facts under `flock`), secrets scrubbed."""
    reason = scrub(" ".join(reason.split()))
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON - 1] + "…"
    where = f"{settings.network} netuid {settings.netuid}, validator {hotkey}"
    when = f", epoch {epoch}" if epoch is not None else ""
    text = scrub(f"FLock validator alert [{condition}] ({where}{when}): {reason}")[:MAX_TEXT]
    return {"text": text, "content": text,
            "flock": {"condition": condition, "network": settings.network, "netuid": settings.netuid,
                      "validator_hotkey": scrub(hotkey), "epoch": epoch, "reason": reason}}


def post_alert(webhook: str, body: dict, timeout_s: float = POST_TIMEOUT_S) -> str | None:
    """POST `body` as JSON to `webhook`. None when it answered 2xx; else why not, in words without the URL or any
    secret. Never raises."""
    request = urllib.request.Request(webhook, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "flock-validator"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # http(s) only: checked on read
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"the webhook answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return scrub(f"the webhook could not be reached: {exc.reason}").replace(webhook, "***")
    except Exception as exc:  # noqa: BLE001 - a timeout, a reset connection, a bad answer: recorded, not raised
        return scrub(f"posting failed: {type(exc).__name__}: {exc}").replace(webhook, "***")
    return None if 200 <= status < 300 else f"the webhook answered HTTP {status}"
