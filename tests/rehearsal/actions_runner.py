"""A small stand-in for the GitHub Actions runner: enough of it to run a workflow's Linux jobs here.

What it does, each as GitHub documents it (docs.github.com unless named):

* Expressions (*Evaluate expressions in workflows and actions*): ``${{ }}`` in strings, ``if:`` without
  them, the contexts ``inputs``, ``secrets``, ``matrix``, ``needs.<job>.outputs/result``, ``steps``,
  ``github``, ``runner``; ``==``, ``!=``, ``!``, ``&&``, ``||``; ``fromJSON``, ``join``,
  ``success()``, ``failure()``, ``always()``, ``cancelled()``. A step's ``if:`` without a status
  function gets ``success() &&`` in front; a job's too (*Using conditions to control job execution*).
* ``run:`` steps run with bash as ``bash --noprofile --norc -eo pipefail {0}`` in the workspace, with
  the files ``GITHUB_ENV``, ``GITHUB_OUTPUT``, ``GITHUB_PATH``, ``GITHUB_STEP_SUMMARY`` (*Workflow
  commands*, *Environment files*; ``name=value`` and ``name<<DELIMITER`` forms).
* Workflow commands in a step's output (``::error ...::``) are read line by line, and none between
  ``::stop-commands::TOKEN`` and ``::TOKEN::`` (actions/runner ``ActionCommandManager``).
* ``actions/upload-artifact`` v4+: a name already uploaded in the run is an error unless
  ``overwrite: true``; the artifact's root is the common folder of its paths (actions/upload-artifact
  README). ``actions/download-artifact`` v5+: with ``name``, or when exactly one artifact matches, or
  with ``merge-multiple``, files go straight into ``path``; otherwise each artifact into
  ``path/<name>/`` (``src/download-artifact.ts``). ``actions/checkout`` copies a prepared tree.
* A job whose needs did not all succeed is skipped unless its ``if:`` has a status function.

What it does not do is marked where it happens: a job it cannot run (Windows) is replaced by a
recorded result, and vmtest is "installed" by putting this checkout's virtualenv on PATH.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Artifacts", "JobRun", "Runner", "evaluate", "interpolate"]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||!|\(|\)|,|\[|\]|\.|\*)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))"
)


class _Parser:
    """Recursive descent over GitHub's expression grammar (the parts workflows here use)."""

    def __init__(self, text: str, context: Mapping[str, Any], status: Mapping[str, bool]) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise ValueError(f"cannot read expression {text!r} at {position}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.index = 0
        self.context = context
        self.status = status

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ValueError(f"expected {value!r}, got {token!r}")
        self.index += 1
        return token

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.and_()
            value = value if _truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.compare()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.compare()
            value = right if _truthy(value) else value
        return value

    def compare(self) -> Any:
        value = self.unary()
        while self.peek() in (("op", "=="), ("op", "!=")):
            _, op = self.take()
            right = self.unary()
            equal = _loose(value) == _loose(right)
            value = equal if op == "==" else not equal
        return value

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not _truthy(self.unary())
        return self.postfix(self.primary())

    def postfix(self, value: Any) -> Any:
        while self.peek() in (("op", "."), ("op", "[")):
            _, op = self.take()
            if op == ".":
                _, name = self.take()
                value = value.get(name) if isinstance(value, dict) else None
            else:
                key = self.or_()
                self.take("]")
                value = value.get(key) if isinstance(value, dict) else None
        return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text) if "." in text else int(text)
        if text == "(":
            value = self.or_()
            self.take(")")
            return value
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if self.peek() == ("op", "("):
            self.take()
            args: list[Any] = []
            while self.peek() != ("op", ")"):
                args.append(self.or_())
                if self.peek() == ("op", ","):
                    self.take()
            self.take(")")
            return self.call(text, args)
        return self.context.get(text)

    def call(self, name: str, args: list[Any]) -> Any:
        functions: dict[str, Callable[..., Any]] = {
            "fromJSON": lambda text: json.loads(text),
            "toJSON": lambda value: json.dumps(value),
            "join": lambda items, sep=",": sep.join(str(item) for item in items),
            "contains": lambda haystack, needle: needle in haystack,
            "success": lambda: self.status["success"],
            "failure": lambda: self.status["failure"],
            "cancelled": lambda: False,
            "always": lambda: True,
        }
        return functions[name](*args)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "")


def _loose(value: Any) -> Any:
    """GitHub compares loosely: numbers and numeric strings alike, strings case-insensitively."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.lower()
    return value


def evaluate(expression: str, context: Mapping[str, Any], status: Mapping[str, bool] | None = None) -> Any:
    """The value of one expression (without ``${{ }}``)."""
    return _Parser(expression, context, status or {"success": True, "failure": False}).parse()


def interpolate(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with every ``${{ }}`` replaced; a string that is one whole expression keeps its type."""
    if not isinstance(value, str):
        return value
    whole = re.fullmatch(r"\$\{\{(.*?)\}\}", value.strip(), re.DOTALL)
    if whole:
        return evaluate(whole.group(1), context)
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _text(evaluate(m.group(1), context)), value, flags=re.DOTALL)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _condition(text: Any, status: Mapping[str, bool], context: Mapping[str, Any]) -> bool:
    if text is None:
        return status["success"]
    source = str(text).strip()
    whole = re.fullmatch(r"\$\{\{(.*)\}\}", source, re.DOTALL)
    source = whole.group(1) if whole else source
    if not re.search(r"\b(success|failure|always|cancelled)\(\)", source):
        source = f"success() && ({source})"
    return _truthy(evaluate(source, context, status))


class Artifacts:
    """The run's artifact store, with upload-artifact v4+ and download-artifact v5+ semantics."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        """The names of every artifact uploaded so far."""
        return sorted(path.name for path in self.root.iterdir())

    def path(self, name: str) -> Path:
        """Where the artifact's files are stored."""
        return self.root / name

    def upload(self, name: str, paths: list[Path], *, overwrite: bool, if_no_files: str) -> str:
        """Store ``paths`` as ``name``; returns "" or the error the action would end with."""
        if name in self.names() and not overwrite:
            return f"Failed to CreateArtifact: an artifact with this name already exists on the run: {name}"
        files = [
            f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])
        ]
        files = [f for f in files if f.is_file()]
        if not files:
            return f"No files were found with the provided path: {paths}" if if_no_files == "error" else ""
        roots = [p if p.is_dir() else p.parent for p in paths if p.exists()]
        common = Path(os.path.commonpath([str(r) for r in roots]))
        target = self.path(name)
        shutil.rmtree(target, ignore_errors=True)
        for file in files:
            dest = target / file.relative_to(common)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest)
        return ""

    def download(self, into: Path, *, name: str | None, pattern: str | None, merge: bool) -> str:
        """Extract artifacts into ``into``; returns "" or the action's error."""
        if name:
            if name not in self.names():
                return f"Unable to download artifact(s): Artifact not found for name: {name}"
            chosen = [name]
        else:
            regex = re.compile(re.escape(pattern or "*").replace(r"\*", ".*") + "$")
            chosen = [n for n in self.names() if regex.match(n)]
        flat = bool(name) or merge or len(chosen) == 1
        for artifact in chosen:
            shutil.copytree(self.path(artifact), into if flat else into / artifact, dirs_exist_ok=True)
        return ""


@dataclass
class JobRun:
    """What one job (one matrix entry) did."""

    name: str
    result: str  # success | failure | skipped | cancelled
    outputs: dict[str, str] = field(default_factory=dict)
    annotations: list[str] = field(default_factory=list)
    summary: str = ""
    log: str = ""
    steps: dict[str, str] = field(default_factory=dict)  # step name -> outcome


@dataclass
class Runner:
    """Runs the jobs of one workflow call: ``inputs``, ``secrets`` and ``github`` as a caller gives them."""

    workflow: Path
    root: Path
    inputs: dict[str, Any]
    secrets: dict[str, str]
    github: dict[str, Any]
    checkouts: dict[str, Path]  # repository ("" for the caller's) -> the tree actions/checkout gives
    install_vmtest: Path  # the bin folder of a virtualenv with this checkout's vmtest
    base_env: dict[str, str] = field(default_factory=dict)
    artifacts: Artifacts = field(init=False)
    document: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.document = yaml.safe_load(self.workflow.read_text(encoding="utf-8"))
        self.artifacts = Artifacts(self.root / "artifacts")
        declared = self.document[True]["workflow_call"]["inputs"]
        self.inputs = {
            key: self.inputs.get(key, spec.get("default")) for key, spec in declared.items()
        } | self.inputs
        known_secrets = self.document[True]["workflow_call"].get("secrets", {})
        unknown = set(self.secrets) - set(known_secrets)
        assert not unknown, f"the workflow declares no secret(s) {unknown}"

    def run(
        self, replaced: Mapping[str, str], needs_results: dict[str, JobRun] | None = None
    ) -> dict[str, list[JobRun]]:
        """Run every job in order; jobs named in ``replaced`` are not run but end with the given result."""
        done: dict[str, list[JobRun]] = {}
        for job_name, job in self.document["jobs"].items():
            if job_name in replaced:
                done[job_name] = [JobRun(job_name, replaced[job_name])]
                continue
            done[job_name] = self.run_job(job_name, job, done)
        return done

    def rerun(self, job_names: list[str], done: dict[str, list[JobRun]]) -> dict[str, list[JobRun]]:
        """ "Re-run failed jobs": run these jobs again in the same run (same artifact store)."""
        again = dict(done)
        for job_name in job_names:
            again[job_name] = self.run_job(job_name, self.document["jobs"][job_name], again)
        return again

    def _needs(self, job: dict[str, Any], done: dict[str, list[JobRun]]) -> dict[str, Any]:
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        context: dict[str, Any] = {}
        for name in needs:
            runs = done[name]
            results = {r.result for r in runs}
            result = (
                "failure"
                if "failure" in results
                else "cancelled"
                if "cancelled" in results
                else "success"
                if "success" in results
                else "skipped"
            )
            outputs: dict[str, str] = {}
            for r in runs:
                outputs.update(r.outputs)
            context[name] = {"result": result, "outputs": outputs}
        return context

    def run_job(self, job_name: str, job: dict[str, Any], done: dict[str, list[JobRun]]) -> list[JobRun]:
        """Every matrix entry of one job."""
        needs = self._needs(job, done)
        context: dict[str, Any] = {
            "inputs": self.inputs,
            "secrets": self.secrets,
            "github": self.github,
            "needs": needs,
            "vars": {},
        }
        status = {"success": all(n["result"] == "success" for n in needs.values()), "failure": False}
        status["failure"] = any(n["result"] == "failure" for n in needs.values())
        if not _condition(job.get("if"), status, context):
            return [JobRun(job_name, "skipped")]
        matrix = job.get("strategy", {}).get("matrix")
        entries: list[dict[str, Any]] = [{}]
        if matrix is not None:
            axes = {key: interpolate(value, context) for key, value in matrix.items()}
            entries = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
        return [self._run_entry(job_name, job, {**context, "matrix": entry}) for entry in entries]

    def _run_entry(self, job_name: str, job: dict[str, Any], context: dict[str, Any]) -> JobRun:
        tag = "-".join(str(v) for v in context["matrix"].values())
        home = self.root / "jobs" / f"{job_name}{'-' + tag if tag else ''}"
        shutil.rmtree(home, ignore_errors=True)
        workspace, temp = home / "workspace", home / "temp"
        workspace.mkdir(parents=True)
        temp.mkdir()
        context = {**context, "runner": {"temp": str(temp), "os": "Linux"}, "steps": {}}
        run = JobRun(job_name, "success")
        env = {**self.base_env, "GITHUB_WORKSPACE": str(workspace), "RUNNER_TEMP": str(temp), "CI": "true"}
        env |= {
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REPOSITORY": str(self.github["repository"]),
        }
        env |= {"GITHUB_RUN_ID": "4242", "GITHUB_ACTIONS": "true"}
        env |= {k: _text(interpolate(v, context)) for k, v in (job.get("env") or {}).items()}
        path_prefix: list[str] = []
        failed = False
        for number, step in enumerate(job["steps"]):
            name = str(step.get("name") or step.get("uses") or f"step {number}")
            status = {"success": not failed, "failure": failed}
            if not _condition(step.get("if"), status, context):
                run.steps[name] = "skipped"
                continue
            outcome, outputs = self._step(step, context, env, path_prefix, workspace, run)
            run.steps[name] = outcome
            if step.get("id"):
                context["steps"][step["id"]] = {"outputs": outputs, "outcome": outcome}
            failed = failed or outcome == "failure"
        run.result = "failure" if failed else "success"
        run.outputs = {k: _text(interpolate(v, context)) for k, v in (job.get("outputs") or {}).items()}
        return run

    def _step(
        self,
        step: dict[str, Any],
        context: dict[str, Any],
        env: dict[str, str],
        path_prefix: list[str],
        workspace: Path,
        run: JobRun,
    ) -> tuple[str, dict[str, str]]:
        step_env = {**env, **{k: _text(interpolate(v, context)) for k, v in (step.get("env") or {}).items()}}
        inputs = {k: interpolate(v, context) for k, v in (step.get("with") or {}).items()}
        uses = str(step.get("uses", ""))
        if uses:
            return self._action(uses, inputs, workspace, run), {}
        if str(step.get("name", "")).startswith("Install vmtest"):
            # Stand-in: the runner "installs" this checkout's vmtest by putting its virtualenv on PATH.
            path_prefix.insert(0, str(self.install_vmtest))
            return "success", {}
        return self._bash(step, context, step_env, path_prefix, workspace, run)

    def _action(self, uses: str, inputs: dict[str, Any], workspace: Path, run: JobRun) -> str:
        action = uses.split("@")[0]
        if action == "actions/checkout":
            source = self.checkouts[str(inputs.get("repository", ""))]
            target = workspace / str(inputs.get("path", ""))
            shutil.copytree(source, target, dirs_exist_ok=True, symlinks=True)
            return "success"
        if action == "actions/setup-python":
            return "success"  # the job's python3 is this machine's
        if action == "actions/upload-artifact":
            paths = [Path(line.strip()) for line in str(inputs["path"]).splitlines() if line.strip()]
            paths = [p if p.is_absolute() else workspace / p for p in paths]
            error = self.artifacts.upload(
                str(inputs["name"]),
                paths,
                overwrite=inputs.get("overwrite") in (True, "true"),
                if_no_files=str(inputs.get("if-no-files-found", "warn")),
            )
        elif action == "actions/download-artifact":
            into = Path(str(inputs.get("path") or workspace))
            into = into if into.is_absolute() else workspace / into
            error = self.artifacts.download(
                into,
                name=inputs.get("name"),
                pattern=inputs.get("pattern"),
                merge=inputs.get("merge-multiple") in (True, "true"),
            )
        else:
            raise AssertionError(f"the stand-in does not know {uses}")
        if error:
            run.annotations.append(f"::error::{error}")
            return "failure"
        return "success"

    def _bash(
        self,
        step: dict[str, Any],
        context: dict[str, Any],
        env: dict[str, str],
        path_prefix: list[str],
        workspace: Path,
        run: JobRun,
    ) -> tuple[str, dict[str, str]]:
        files = {
            name: workspace.parent / f"{name.lower()}-{len(run.steps)}"
            for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_PATH")
        }
        for path in files.values():
            path.write_text("")
        summary = workspace.parent / f"summary-{len(run.steps)}.md"
        summary.write_text("")
        script = workspace.parent / f"step-{len(run.steps)}.sh"
        script.write_text(str(interpolate(step["run"], context)))
        full_env = {**env, **{k: str(v) for k, v in files.items()}, "GITHUB_STEP_SUMMARY": str(summary)}
        full_env["PATH"] = os.pathsep.join([*path_prefix, env.get("PATH", os.environ["PATH"])])
        cwd = workspace / str(step.get("working-directory", ""))
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        run.log += result.stdout + result.stderr
        run.annotations += _commands(result.stdout)
        run.summary += summary.read_text(encoding="utf-8")
        env.update(_environment_file(files["GITHUB_ENV"]))
        path_prefix[:0] = [line for line in files["GITHUB_PATH"].read_text().splitlines() if line][::-1]
        outputs = _environment_file(files["GITHUB_OUTPUT"])
        return ("success" if result.returncode == 0 else "failure"), outputs


def _environment_file(path: Path) -> dict[str, str]:
    """``name=value`` lines and ``name<<DELIMITER`` blocks (docs: *Multiline strings*)."""
    values: dict[str, str] = {}
    lines = iter(path.read_text(encoding="utf-8").splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = list(itertools.takewhile(lambda text, end=delimiter: text != end, lines))
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def _commands(stdout: str) -> list[str]:
    """The workflow commands the runner reads from a step's output, honouring ``::stop-commands::``."""
    found: list[str] = []
    resume: str | None = None
    for line in stdout.splitlines():
        if resume is not None:
            if line.strip() == f"::{resume}::":
                resume = None
            continue
        if line.startswith("::stop-commands::"):
            resume = line[len("::stop-commands::") :].strip()
            continue
        if line.startswith(("::error", "::warning", "::notice")):
            found.append(line)
    return found
