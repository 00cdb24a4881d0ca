"""The demo's stage runner: each stage a script run in a subprocess (the venv's python), reused when its
recorded settings match and its output is complete, redone (with the stages built on it) when they changed,
its output streamed to the console and to ``OUT/logs/<stage>.log``, its wall and CPU time recorded in
``OUT/stages/<stage>.json``. The demo's own stages are in :mod:`pretraining.report.demo`."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

#: the repository root: a stage's script path is relative to it
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    """One step of the demo: a script run, how to tell it finished, and what it depends on."""

    name: str
    script: str
    argv: list[str]
    output: Path
    is_complete: Callable[[], bool]
    depends: list["Stage"] = field(default_factory=list)
    resume_argv: Callable[[], list[str]] = lambda: []
    before: Callable[[], None] = lambda: None

    def fingerprint(self) -> dict:
        """The settings that define this stage's output, its dependencies' included."""
        return {"script": self.script, "argv": self.argv, "depends": [d.fingerprint() for d in self.depends]}


class StageTiming(NamedTuple):
    """How a stage went: ran, reused, failed or skipped; wall and CPU seconds (of the run that made it)."""

    name: str
    status: str
    seconds: float
    cpu_seconds: float


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class StageRunner:
    """Runs stages in order: reuse the finished, redo the changed, stream output, time everything."""

    def __init__(self, out: Path, total: int, stream=None, env: Optional[dict] = None):
        self.out = out
        self.total = total
        self.stream = stream or sys.stdout
        self.env = env or {}
        self.started = time.monotonic()
        self.index = 0
        self.timings: list[StageTiming] = []
        self.failed: dict[str, Path] = {}

    def say(self, message: str) -> None:
        """A demo line with the elapsed time."""
        elapsed = int(time.monotonic() - self.started)
        print(f"[demo {elapsed // 60:d}:{elapsed % 60:02d}] {message}", file=self.stream, flush=True)

    def _record_path(self, stage: Stage) -> Path:
        return self.out / "stages" / f"{stage.name}.json"

    def _write_record(self, stage: Stage, seconds=None, cpu_seconds=None) -> None:
        path = self._record_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": stage.fingerprint(), "seconds": seconds,
                                    "cpu_seconds": cpu_seconds}, indent=1))

    def run(self, stage: Stage) -> bool:
        """Run (or reuse) ``stage``; True when its output is complete."""
        self.index += 1
        head = f"stage {self.index}/{self.total} {stage.name}"
        blocked = [d.name for d in stage.depends if d.name in self.failed]
        if blocked:
            self.say(f"{head}: skipped, {', '.join(blocked)} failed")
            self.failed[stage.name] = self.failed[blocked[0]]
            self.timings.append(StageTiming(stage.name, "skipped", 0.0, 0.0))
            return False
        record_path = self._record_path(stage)
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        same = record.get("fingerprint") == stage.fingerprint()
        if same and stage.is_complete():
            seconds, cpu = float(record.get("seconds") or 0.0), float(record.get("cpu_seconds") or 0.0)
            self.say(f"{head}: reused (finished earlier in {seconds:.0f}s; output {stage.output})")
            self.timings.append(StageTiming(stage.name, "reused", seconds, cpu))
            return True
        if not same and stage.output.exists():
            self.say(f"{head}: settings changed since the last run; starting it afresh")
            shutil.rmtree(stage.output)
        stage.before()
        self._write_record(stage)
        argv = stage.argv + stage.resume_argv()
        if len(argv) > len(stage.argv):
            self.say(f"{head}: resuming from its last checkpoint")
        self.say(f"{head}: running {stage.script} (log: {self._log_path(stage)})")
        began, cpu_began = time.monotonic(), _children_cpu_seconds()
        code = self._execute(stage, argv)
        seconds, cpu = time.monotonic() - began, _children_cpu_seconds() - cpu_began
        if code == 0 and stage.is_complete():
            self._write_record(stage, seconds, cpu)
            self.say(f"{head}: done in {seconds:.0f}s ({cpu:.0f}s of CPU time)")
            self.timings.append(StageTiming(stage.name, "ran", seconds, cpu))
            return True
        why = f"exit code {code}" if code else "it finished without its output"
        self.say(f"{head}: FAILED ({why}) after {seconds:.0f}s; see {self._log_path(stage)}")
        self.failed[stage.name] = self._log_path(stage)
        self.timings.append(StageTiming(stage.name, "failed", seconds, cpu))
        return False

    def _log_path(self, stage: Stage) -> Path:
        return self.out / "logs" / f"{stage.name}.log"

    def _execute(self, stage: Stage, argv: Sequence[str]) -> int:
        """Run the script with the venv's python; its output goes to the console (indented) and the log."""
        log = self._log_path(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **os.environ}  # the caller's environment wins over the demo's defaults
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, *([str(ROOT / stage.script)] if stage.script else []), *argv]  # "": a -m module
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                       errors="replace", bufsize=1)
            try:
                for line in process.stdout:
                    handle.write(line)
                    self.stream.write(f"    {line}")
                    self.stream.flush()
                return process.wait()
            except BaseException:  # interrupted: never leave the script running behind the demo's back
                _stop(process)
                raise
            finally:
                process.stdout.close()


def _stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Interrupt ``process`` (it may finish its current checkpoint write), then terminate, then kill."""
    for send in (lambda: process.send_signal(signal.SIGINT), process.terminate, process.kill):
        if process.poll() is not None:
            return
        send()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def terminate_as_interrupt():
    """Inside, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the running stage is stopped too."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
