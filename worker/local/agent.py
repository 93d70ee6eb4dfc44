"""A local stand-in for the SSM Agent: runs our Command documents on "this instance".

The emulator (moto) records ``SendCommand`` but runs nothing, so ``processor
local`` needs something that does what the SSM Agent does on EC2: poll for
commands aimed at this instance, fetch the document, check the parameters, and
run each ``aws:runShellScript`` step with ``/bin/sh``. What it copies from the
real service and agent, and where it differs:

* Parameters are checked as the service and the agent do: unknown names,
  missing required values, several values for a ``String``, ``allowedValues``,
  ``minChars``/``maxChars`` and ``allowedPattern``; defaults are filled in and
  checked too. On AWS a bad parameter makes ``SendCommand`` itself fail; the
  emulator accepts anything, so here the command ends ``InvalidParameters``
  and nothing runs.
* ``allowedPattern`` is matched the way the agent (Go, RE2) matches it:
  ``regexp.MatchString`` - an unanchored search with the pattern exactly as
  written, so the pattern carries its own ``^...$``. RE2's ``$`` is the end of
  the text, while Python's also matches before a final newline; the pattern is
  translated so ``"a.csv\\n"`` fails here as it fails there. RE2 features that
  Python lacks, and RE2's limits (counted repetition above 1000, lookaround,
  back-references), are rejected, so a pattern that works here compiles on the
  agent too.
* A parameter declared with ``interpolationType: ENV_VAR`` reaches the script
  as the environment variable ``SSM_<Name>`` (AWS: "the system creates an
  environment variable named SSM_parameter-name containing the parameter
  value"). The script text is left as written: double-brace placeholders of an
  ENV_VAR parameter are NOT filled in, and a warning is logged. AWS's own
  example still writes such a placeholder next to ENV_VAR and says
  allowedPattern is only unneeded when a document uses no double braces - i.e.
  the agent may still paste the value there. Leaving them unfilled makes a
  document that relies on that fail visibly here instead of working by the
  same injectable path; our documents use none (a test checks).
* Parameters without ENV_VAR are pasted into the step inputs textually, as the
  agent's ``ReplaceParameter`` does (``{{\\s*Name\\s*}}``, every occurrence,
  value inserted raw). This is what makes such documents injectable, and the
  tests show it.
* Commands start in request order and, while the agent runs (``start()``), up
  to ``COMMAND_WORKERS`` (5) at a time, the real agent's default
  ``CommandWorkersLimit``; ``run_once()`` runs them one after another. Each
  script runs in its own session so a timeout kills the whole process group;
  values never appear on a command line, and ``shell=True`` is never used.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from worker.local.params import (
    InvalidDocument,
    InvalidParameters,
    RenderedStep,
    prepare_step,
    validate_parameters,
)

LOGGER = logging.getLogger("processor.local.agent")

#: Command statuses this agent reports (a subset of SSM's invocation statuses).
STATUS_SUCCESS = "Success"
STATUS_FAILED = "Failed"
STATUS_INVALID_PARAMETERS = "InvalidParameters"
STATUS_TIMED_OUT = "TimedOut"

#: Command statuses that mean "do not run".
_SKIP_STATUSES = frozenset({"Cancelled", "Cancelling"})


#: Commands run at once while the agent polls (the real agent's CommandWorkersLimit default).
COMMAND_WORKERS = 5


class SsmClient(Protocol):
    """The calls of a boto3 SSM client that the agent makes."""

    def list_commands(self, **kwargs: Any) -> Any: ...

    def get_document(self, **kwargs: Any) -> Any: ...


@dataclass
class CommandResult:
    """What happened to one command on this instance."""

    command_id: str
    instance_id: str
    document_name: str
    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    parameters: dict[str, list[str]] = field(default_factory=dict)


# --- documents -------------------------------------------------------------------------


def _precondition_holds(step: Mapping[str, Any]) -> bool:
    precondition = step.get("precondition")
    if not precondition:
        return True
    for operator, args in precondition.items():
        if operator != "StringEquals" or not isinstance(args, list) or len(args) != 2:
            raise InvalidDocument(f"unsupported precondition {precondition!r}")
        if args[0] != "platformType":
            raise InvalidDocument(f"unsupported precondition {precondition!r}")
        if str(args[1]) != ("Linux" if sys.platform.startswith("linux") else sys.platform):
            return False
    return True


def parse_content(response: Mapping[str, Any]) -> dict[str, Any]:
    text = response["Content"]
    if response.get("DocumentFormat", "JSON") == "YAML":
        content = yaml.safe_load(text)
    else:
        content = json.loads(text)
    if not isinstance(content, dict):
        raise InvalidDocument("document content is not a mapping")
    if not str(content.get("schemaVersion", "")).startswith("2."):
        raise InvalidDocument(f"schemaVersion {content.get('schemaVersion')!r} is not supported")
    return content


# --- the agent -------------------------------------------------------------------------


class LocalSsmAgent:
    """Polls the emulator for commands aimed at ``instance_id`` and runs them here."""

    def __init__(
        self,
        ssm_client: SsmClient,
        instance_id: str,
        *,
        env: Mapping[str, str],
        work_dir: Path,
        poll_interval: float = 0.2,
        on_result: Callable[[CommandResult], None] | None = None,
        inbox: queue.SimpleQueue[dict[str, Any]] | None = None,
    ) -> None:
        self._ssm = ssm_client
        self.instance_id = instance_id
        self._env = dict(env)
        self._work_dir = Path(work_dir)
        self._poll_interval = poll_interval
        self._on_result = on_result
        # With an inbox, commands are delivered to this agent (by the local SSM
        # front, which knows whom SendCommand addressed); without one it polls
        # the emulator, which records every command against every instance.
        self._inbox = inbox
        meta = getattr(ssm_client, "meta", None)
        self._region = str(getattr(meta, "region_name", None) or "us-east-1")
        self._seen: set[str] = set()
        self._documents: dict[tuple[str, str], dict[str, Any]] = {}
        self._results: list[CommandResult] = []
        self._lock = threading.Lock()  # guards _results
        self._run_lock = threading.Lock()  # one run_once at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._running: set[Future[CommandResult | None]] = set()

    @property
    def results(self) -> list[CommandResult]:
        """Every command result so far, oldest first (a copy)."""
        with self._lock:
            return list(self._results)

    def result(self, command_id: str) -> CommandResult | None:
        """This agent's result of one command; None until it has finished (or if never received)."""
        with self._lock:
            return next((r for r in reversed(self._results) if r.command_id == command_id), None)

    def start(self) -> None:
        """Poll every ``poll_interval`` seconds in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("agent already started")
        self._stop.clear()
        self._pool = ThreadPoolExecutor(COMMAND_WORKERS, thread_name_prefix="local-ssm-command")
        self._thread = threading.Thread(target=self._loop, name="local-ssm-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; wait up to ``timeout`` for running commands to finish.

        Commands received but not started stay unseen: a later start() runs them.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False, cancel_futures=True)
            wait(list(self._running), timeout=timeout)

    @property
    def online(self) -> bool:
        """Whether the agent is running (what SSM calls PingStatus Online)."""
        return self._thread is not None and not self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_pending(stoppable=True)
            except Exception:  # the loop outlives any one bad poll, like the real agent
                LOGGER.exception("local SSM agent poll failed; retrying")
            self._stop.wait(self._poll_interval)

    def run_once(self) -> list[CommandResult]:
        """Run every new command for this instance, in request order; return their results."""
        return self._run_pending(stoppable=False)

    def _run_pending(self, *, stoppable: bool) -> list[CommandResult]:
        """Run (or, while started, hand to the command workers) every new command."""
        with self._run_lock:
            results = []
            for command in self._pending_commands():
                if stoppable and self._stop.is_set():
                    break  # the rest stay unseen: a later start() runs them
                command_id = command["CommandId"]
                self._seen.add(command_id)
                pool = self._pool if stoppable else None
                if pool is None:
                    result = self._finish(command, stoppable=False)
                    if result is not None:
                        results.append(result)
                    continue
                future = pool.submit(self._finish, command, stoppable=True)
                self._running.add(future)
                future.add_done_callback(functools.partial(self._forget, command_id=command_id))
            return results

    def _forget(self, future: Future[CommandResult | None], command_id: str) -> None:
        self._running.discard(future)
        if future.cancelled():
            self._seen.discard(command_id)  # never started: a later start() runs it

    def _finish(self, command: Mapping[str, Any], *, stoppable: bool) -> CommandResult | None:
        if stoppable and self._stop.is_set():
            self._seen.discard(command["CommandId"])  # stopping: leave it for a later start()
            return None
        result = self._execute(command)
        with self._lock:
            self._results.append(result)
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:
                LOGGER.exception("on_result callback failed for %s", result.command_id)
        return result

    def _pending_commands(self) -> list[dict[str, Any]]:
        if self._inbox is not None:
            delivered: list[dict[str, Any]] = []
            while True:
                try:
                    command = self._inbox.get_nowait()
                except queue.Empty:
                    return delivered
                if command["CommandId"] not in self._seen:
                    delivered.append(command)
        commands: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"InstanceId": self.instance_id}
        while True:
            page = self._ssm.list_commands(**kwargs)
            commands.extend(page.get("Commands", []))
            token = page.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
        epoch = _dt.datetime.min.replace(tzinfo=_dt.UTC)
        pending = [
            c
            for c in commands
            if self.instance_id in c.get("InstanceIds", [])
            and c["CommandId"] not in self._seen
            and c.get("Status") not in _SKIP_STATUSES
        ]
        # Stable: ties keep the emulator's order. The real API lists newest first.
        return sorted(pending, key=lambda c: c.get("RequestedDateTime") or epoch)

    def _document(self, name: str, version: str | None) -> dict[str, Any]:
        cacheable = version is not None and version.isdigit()
        if cacheable and (name, str(version)) in self._documents:
            return self._documents[(name, str(version))]
        kwargs = {"Name": name}
        if version:
            kwargs["DocumentVersion"] = version
        content = parse_content(self._ssm.get_document(**kwargs))
        if cacheable:
            self._documents[(name, str(version))] = content
        return content

    def _execute(self, command: Mapping[str, Any]) -> CommandResult:
        command_id = str(command["CommandId"])
        raw_parameters = {k: list(v) for k, v in (command.get("Parameters") or {}).items()}
        result = CommandResult(
            command_id=command_id,
            instance_id=self.instance_id,
            document_name=str(command.get("DocumentName", "")),
            status=STATUS_FAILED,
            parameters=raw_parameters,
        )
        try:
            content = self._document(result.document_name, command.get("DocumentVersion"))
            values = validate_parameters(content, raw_parameters)
            steps = content.get("mainSteps") or []
            if not steps:
                raise InvalidDocument("document has no mainSteps")
            rendered = [
                prepare_step(step, values, content.get("parameters") or {})
                for step in steps
                if _precondition_holds(step)
            ]
        except InvalidParameters as exc:
            result.status = STATUS_INVALID_PARAMETERS
            result.error = str(exc)
            LOGGER.warning("command %s rejected: %s", command_id, exc)
            return result
        except Exception as exc:  # noqa: BLE001 - a bad document or emulator error fails this command only
            result.error = f"{type(exc).__name__}: {exc}"
            LOGGER.warning("command %s failed before running: %s", command_id, result.error)
            return result
        result.status = STATUS_SUCCESS
        for index, step in enumerate(rendered):
            status, exit_code, stdout, stderr = self._run_step(command_id, index, step)
            result.exit_code = exit_code
            result.stdout += stdout
            result.stderr += stderr
            if status != STATUS_SUCCESS:
                result.status = status
                result.error = (
                    f"step {step.name!r} timed out after {step.timeout_s:g}s"
                    if status == STATUS_TIMED_OUT
                    else f"step {step.name!r} exited with {exit_code}"
                )
                break
        LOGGER.info(
            "command %s (%s) finished: %s exit=%s",
            command_id,
            result.document_name,
            result.status,
            result.exit_code,
        )
        return result

    def _run_step(
        self, command_id: str, index: int, step: RenderedStep
    ) -> tuple[str, int | None, str, str]:
        # Like the agent's orchestration dir: <work>/<command id>/<step>/_script.sh.
        safe_step = re.sub(r"[^A-Za-z0-9_.-]", "_", step.name) or f"step{index}"
        step_dir = self._work_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", command_id) / safe_step
        step_dir.mkdir(parents=True, exist_ok=True)
        script_path = step_dir / "_script.sh"
        script_path.write_text(step.script, encoding="utf-8")
        script_path.chmod(0o700)
        env = dict(self._env)
        env.update(step.env)
        env["AWS_SSM_INSTANCE_ID"] = self.instance_id
        env["AWS_SSM_REGION_NAME"] = self._region
        cwd = Path(step.working_directory) if step.working_directory else step_dir
        # Popen rather than run(): on timeout the whole session is killed, not just sh.
        with subprocess.Popen(
            ["/bin/sh", str(script_path)],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=step.timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                out, err = proc.communicate()
                return STATUS_TIMED_OUT, None, _decode(out), _decode(err)
        status = STATUS_SUCCESS if proc.returncode == 0 else STATUS_FAILED
        return status, proc.returncode, _decode(out), _decode(err)


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
