"""The Lambda trigger's SSM mode under test: its environment and an in-memory SSM client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from worker.jobs.identity import decode_key_base64

#: The instance the trigger targets in SSM mode.
INSTANCE = "i-0123456789abcdef0"
#: The handler's environment in SSM mode.
ENV = {"DOCUMENT_NAME": "processor-SubmitDocument", "TARGET_INSTANCE_ID": INSTANCE}


class FakeSsm:
    """Records SendCommand calls; raises a ClientError for keys listed in ``fail``.

    ``fail`` maps key -> list of error codes, consumed one per call, so a key
    can fail a few times and then succeed.
    """

    def __init__(self, fail: Mapping[str, list[str]] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self._fail = {key: list(codes) for key, codes in (fail or {}).items()}

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        codes = self._fail.get(sent_key(kwargs["Parameters"]))
        if codes:
            code = codes.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": f"fake {code}"}},
                              "SendCommand")
        return {"Command": {"CommandId": f"cmd-{len(self.calls)}"}}

    @property
    def keys(self) -> list[str]:
        return [sent_key(call["Parameters"]) for call in self.calls]


def sent_key(parameters: Mapping[str, list[str]]) -> str:
    """The key a SendCommand carries, as Key or as KeyBase64 (decoded as processorctl does)."""
    if "KeyBase64" in parameters:
        return decode_key_base64(parameters["KeyBase64"][0])
    return parameters["Key"][0]


class Factory:
    """A client factory that counts how often it is asked for a client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.built = 0

    def __call__(self) -> Any:
        self.built += 1
        return self.client
