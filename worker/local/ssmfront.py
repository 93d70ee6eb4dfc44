"""A small front for the emulator's SSM API that behaves like the real service where moto does not.

The Lambda's SSM client talks to this front (``AWS_ENDPOINT_URL_SSM``); it
forwards everything to moto except:

* ``SendCommand``: checks each addressed instance has an online agent
  (``InvalidInstanceId`` otherwise, as SSM answers for an instance that is not
  running or not connected), checks parameters against the document like the
  service (``InvalidParameters``), lets moto record the command, then delivers
  it to exactly the addressed agents. moto would record it against every EC2
  instance it knows, so agents must not learn their work from moto.
* ``DescribeInstanceInformation`` (missing from moto): the registered agents,
  ``PingStatus`` Online or ConnectionLost.
* ``GetCommandInvocation`` and ``ListCommandInvocations``: what the local
  agent really ran (status, exit code, stdout, stderr), ``InProgress`` until
  it has; moto would answer ``Success`` with empty output for anything.
* ``SendCommand`` with ``Targets``: ``tag:processor:fleet`` (every registered
  instance carries the stack's tag, as on AWS) or ``InstanceIds``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from worker.local.agent import CommandResult
from worker.local.emulator import INSTANCE_TAG, STACK_NAME
from worker.local.params import InvalidParameters, validate_parameters

LOGGER = logging.getLogger("processor.local.ssmfront")

_TARGET_PREFIX = "AmazonSSM."


@dataclass
class _Agent:
    inbox: queue.SimpleQueue[dict[str, Any]]
    online: Callable[[], bool]
    #: The agent's result of a command (by id), None while it has none.
    result: Callable[[str], CommandResult | None] | None = None


#: The tag every local instance carries, as a Targets key.
_FLEET_TARGET = f"tag:{INSTANCE_TAG}"


class SsmFront:
    def __init__(self, upstream: str, document: Callable[[str, str | None], dict[str, Any]]) -> None:
        self._upstream = urlsplit(upstream)
        self._document = document
        self._agents: dict[str, _Agent] = {}
        self._lock = threading.Lock()
        #: (instance id, command id) of every delivered command, in order.
        self.deliveries: list[tuple[str, str]] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                front._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ssm-front",
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def register(self, instance_id: str, inbox: queue.SimpleQueue[dict[str, Any]],
                 online: Callable[[], bool],
                 result: Callable[[str], CommandResult | None] | None = None) -> None:
        with self._lock:
            self._agents[instance_id] = _Agent(inbox, online, result)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- requests ---------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        target = req.headers.get("X-Amz-Target", "")
        try:
            if target == _TARGET_PREFIX + "SendCommand":
                status, reply = self._send_command(req, body)
            elif target == _TARGET_PREFIX + "DescribeInstanceInformation":
                status, reply = 200, self._describe_instances(json.loads(body or b"{}"))
            elif target == _TARGET_PREFIX + "GetCommandInvocation":
                status, reply = self._get_invocation(req, body)
            elif target == _TARGET_PREFIX + "ListCommandInvocations":
                status, reply = self._list_invocations(req, body)
            else:
                status, reply = self._forward(req, body)
        except Exception as exc:  # answer like a service, keep serving
            LOGGER.exception("ssm front failed")
            status, reply = 500, _error("InternalServerError", str(exc))
        payload = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/x-amz-json-1.1")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _send_command(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
        request = json.loads(body)
        instances = list(request.get("InstanceIds") or [])
        if request.get("Targets"):
            try:
                instances = self._targeted(request["Targets"])
            except ValueError as exc:
                return 400, _error("ValidationException", str(exc))
            # moto records the command against the instances it is given, like SSM resolves targets.
            body = json.dumps({**{k: v for k, v in request.items() if k != "Targets"},
                               "InstanceIds": instances}).encode()
        with self._lock:
            agents = {i: self._agents.get(i) for i in instances}
        offline = [i for i, agent in agents.items() if agent is None or not agent.online()]
        if not instances or offline:
            return 400, _error("InvalidInstanceId",
                               f"Instances {offline or instances} not in a valid state for account")
        document = self._document(request["DocumentName"], request.get("DocumentVersion"))
        try:
            validate_parameters(document, request.get("Parameters") or {})
        except InvalidParameters as exc:
            return 400, _error("InvalidParameters", str(exc))
        status, reply = self._forward(req, body)
        if status != 200:
            return status, reply
        command = json.loads(reply)["Command"]
        delivered = {
            "CommandId": command["CommandId"], "DocumentName": request["DocumentName"],
            "DocumentVersion": request.get("DocumentVersion"),
            "Parameters": request.get("Parameters") or {}, "InstanceIds": instances,
            "RequestedDateTime": dt.datetime.now(dt.UTC),
        }
        for instance in instances:
            agent = agents[instance]
            assert agent is not None
            agent.inbox.put({**delivered, "InstanceIds": [instance]})
            with self._lock:
                self.deliveries.append((instance, command["CommandId"]))
        return 200, reply

    def _targeted(self, targets: list[dict[str, Any]]) -> list[str]:
        """The registered instances ``Targets`` names (the fleet tag, or InstanceIds)."""
        with self._lock:
            known = sorted(self._agents)
        chosen: set[str] = set(known)
        for target in targets:
            key, values = target.get("Key", ""), set(target.get("Values") or [])
            if key == _FLEET_TARGET:
                chosen &= set(known) if STACK_NAME in values else set()
            elif key == "InstanceIds":
                chosen &= values
            else:
                raise ValueError(f"this front supports Targets {_FLEET_TARGET} and InstanceIds, not {key!r}")
        return sorted(chosen)

    def _find(self, command_id: str, instance_id: str) -> tuple[bool, CommandResult | None]:
        """Whether the command was delivered to the instance, and the agent's result if it has one."""
        with self._lock:
            delivered = (instance_id, command_id) in self.deliveries
            agent = self._agents.get(instance_id)
        if not delivered or agent is None or agent.result is None:
            return delivered, None
        return True, agent.result(command_id)

    def _get_invocation(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
        request = json.loads(body or b"{}")
        command_id, instance_id = request.get("CommandId", ""), request.get("InstanceId", "")
        delivered, result = self._find(command_id, instance_id)
        if not delivered:
            return self._forward(req, body)  # moto: InvocationDoesNotExist, as the service says
        return 200, _invocation(command_id, instance_id, result)

    def _list_invocations(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
        request = json.loads(body or b"{}")
        command_id = request.get("CommandId", "")
        with self._lock:
            instances = [i for i, c in self.deliveries if c == command_id]
        if not command_id or not instances:
            return self._forward(req, body)
        details = bool(request.get("Details"))
        invocations = []
        for instance_id in instances:
            _, result = self._find(command_id, instance_id)
            one = _invocation(command_id, instance_id, result)
            entry = {"CommandId": command_id, "InstanceId": instance_id, "Status": one["Status"],
                     "StatusDetails": one["StatusDetails"], "DocumentName": one["DocumentName"]}
            if details:
                entry["CommandPlugins"] = [{
                    "Name": one["PluginName"], "Status": one["Status"], "StatusDetails": one["StatusDetails"],
                    "ResponseCode": one["ResponseCode"], "Output": one["StandardOutputContent"][:2500],
                }]
            invocations.append(entry)
        return 200, {"CommandInvocations": invocations}

    def _describe_instances(self, request: dict[str, Any]) -> dict[str, Any]:
        wanted: set[str] | None = None
        for item in request.get("Filters") or request.get("InstanceInformationFilterList") or []:
            if item.get("Key", item.get("key")) in ("InstanceIds", "instanceIds"):
                wanted = set(item.get("Values", item.get("valueSet", [])))
        with self._lock:
            agents = dict(self._agents)
        now = dt.datetime.now(dt.UTC).timestamp()
        return {"InstanceInformationList": [
            {"InstanceId": instance, "PingStatus": "Online" if agent.online() else "ConnectionLost",
             "LastPingDateTime": now, "PlatformType": "Linux", "ResourceType": "EC2Instance",
             "AgentVersion": "3.3.local"}
            for instance, agent in sorted(agents.items()) if wanted is None or instance in wanted
        ]}

    def _forward(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(str(self._upstream.hostname), self._upstream.port, timeout=60)
        try:
            # Content-Length from the body sent (a Targets request is rewritten to InstanceIds).
            headers = {k: v for k, v in req.headers.items()
                       if k.lower() not in ("connection", "host", "content-length")}
            conn.request("POST", req.path, body=body, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()


def _invocation(command_id: str, instance_id: str, result: CommandResult | None) -> dict[str, Any]:
    """A GetCommandInvocation reply from the local agent's result (InProgress until it has one)."""
    if result is None:
        status, code, out, err, name = "InProgress", -1, "", "", ""
    else:
        status = result.status
        code = result.exit_code if result.exit_code is not None else -1
        out, err, name = result.stdout, result.stderr or (result.error or ""), result.document_name
    return {
        "CommandId": command_id, "InstanceId": instance_id, "DocumentName": name,
        "DocumentVersion": "$DEFAULT",
        "PluginName": "aws:runShellScript", "ResponseCode": code, "Status": status,
        "StatusDetails": status, "StandardOutputContent": out[:24000], "StandardErrorContent": err[:8000],
        "StandardOutputUrl": "", "StandardErrorUrl": "",
    }


def _error(code: str, message: str) -> dict[str, str]:
    return {"__type": code, "message": message}
