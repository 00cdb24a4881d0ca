"""The optimizer study: each optimizer tuned on its own, several pretraining seeds, a control, one command.

``python -m pretraining.study --output_dir STUDY --dataset_path SHARDS --max_steps 600 -- [run_pretraining flags]``
(or ``python -m pretraining.study study.json``: the same keys, ``pretrain_args`` for the pretraining flags).

Phases, every run an ordinary ``run_pretraining.py`` run folder under ``STUDY/runs/`` (log in ``STUDY/logs/``):

1. **sweep**: per optimizer and precision, its LR grid (``--lr_grid adamw=1e-3,3e-3,1e-2``, default
   ``--grid_points`` values spaced by ``--grid_factor`` around the optimizer's :data:`DEFAULT_LR`) with the first
   seed, each run to the end of its own schedule (``--max_steps`` or ``--budget_minutes``); the best LR is the
   lowest final held-out MLM loss (the shards' test split, never a fine-tuning split). A best LR on the grid's edge
   extends the grid one step that way (``--extend`` times at most). A run whose loss became NaN is a "diverged"
   row (it never wins), not a crash.
2. **seeds**: the best LR again with each further ``--seeds`` value (initialisation and data order).
3. **control**: the same model exported untrained (``--max_steps 0``) with each seed.
4. **fine-tuning** (``--finetune_task``): every seed's model of every optimizer and the controls through
   ``run_glue.py --learning_rate_grid`` (each model's own fine-tuning LR, chosen on a dev split carved out of the
   training examples).

Then ``STUDY/study.md``, ``study.csv`` and ``study.png`` (:mod:`pretraining.report.study_report`).

A rerun continues: finished runs are reused, interrupted ones resume from their checkpoint, failed ones are
retried; a failed run is reported with its log's last line and the others go on. ``--parallel N`` runs N at once
(one GPU each on a GPU machine, the cores split on a CPU). ``--plan FILE`` writes the command of every run the
current phase still needs, one per line, for a cluster scheduler; rerun the study when they are done to collect
them and plan the next phase. The settings are recorded in ``STUDY/study.json``: another study's settings in the
same folder, or two studies on one folder at once, are refused before any run starts.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from pretraining.report import runs
from pretraining.checkpoints.checkpoint import list_checkpoints
from pretraining.cli import ArgumentChecker, parse_args
from pretraining.errors import UserError, run_main
from pretraining.report.stages import ROOT, _stop, terminate_as_interrupt

#: the centre of each optimizer's default LR grid (small BERTs at batch 32-256; Lion's sign update wants ~10x less)
DEFAULT_LR = {"adamw": 3e-3, "adam": 3e-3, "lamb": 1e-2, "adafactor": 3e-3, "lion": 3e-4, "stableadamw": 3e-3,
              "sfadamw": 3e-3, "muon": 3e-3}
#: flags a study adds for an optimizer (schedule-free AdamW has no decay schedule)
OPTIMIZER_FLAGS = {"sfadamw": ["--curve", "constant"]}
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}
#: pretraining flags the study sets per run: they may not appear in --pretrain_args
OWNED_FLAGS = ("--dataset_path", "--output_dir", "--job_name", "--optimizer_type", "--lr", "--seed", "--max_steps",
               "--total_training_time", "--early_exit_time_marker", "--fp16", "--bf16", "--load_training_checkpoint",
               "--load_checkpoint_id", "--overwrite_output_dir", "--do_validation")
FINISHED = ("max_steps", "time_budget", "num_epochs", "early_stop")
SETTINGS_FILE = "study.json"
LOCK_FILE = ".study.lock"
CONTROL = "untrained"


@dataclass
class StudyArguments:
    """Flags of the study (``python -m pretraining.study --help``); pretraining flags go after ``--``."""

    output_dir: str = field(default=None, metadata={"help": "The study's folder (runs/, logs/, study.md ...)"})
    dataset_path: str = field(default=None, metadata={"help": "Shards written by prepare_dataset.py"})
    optimizers: list[str] = field(default_factory=lambda: ["adamw", "adam", "lamb", "adafactor", "muon"],
                                  metadata={"help": f"Optimizers to compare (of: {', '.join(DEFAULT_LR)})",
                                            "nargs": "+"})
    precisions: list[str] = field(default_factory=lambda: ["fp32"],
                                  metadata={"help": "Precisions (fp32, bf16, fp16): every optimizer runs at each",
                                            "nargs": "+"})
    lr_grid: list[str] = field(default_factory=list, metadata={
        "help": "An optimizer's own LR grid, e.g. adamw=1e-3,3e-3,1e-2 (others: the default grid)", "nargs": "*"})
    grid_points: int = field(default=3, metadata={"help": "Values of a default grid (centred on the optimizer's "
                                                          "default LR)"})
    grid_factor: float = field(default=3.0, metadata={"help": "Ratio between neighbouring values of a default grid, "
                                                              "and of an extension step"})
    extend: int = field(default=1, metadata={"help": "Extend a grid this many steps at most when its best LR lies on "
                                                     "its edge (0: never)"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "Budget of every run in optimizer steps "
                                                                     "(step-based LR schedule)"})
    budget_minutes: Optional[float] = field(default=None, metadata={"help": "Budget of every run in minutes of "
                                                                            "training time (time-based schedule)"})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={
        "help": "Pretraining seeds (initialisation and data order); the first one runs the sweep", "nargs": "+"})
    control: bool = field(default=True, metadata={"help": "Export the untrained model with each seed as the control"})
    target_loss: Optional[float] = field(default=None, metadata={
        "help": "Held-out MLM loss whose time and tokens to reach are reported (default: the worst optimizer's "
                "final mean, which every optimizer reaches)"})
    finetune_task: Optional[str] = field(default=None, metadata={"help": "Fine-tune every chosen model and the "
                                                                         "control on this task (run_glue.py)"})
    finetune_lr_grid: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3], metadata={
        "help": "Fine-tuning LRs each model chooses from on its dev split", "nargs": "+"})
    finetune_args: list[str] = field(default_factory=list, metadata={
        "help": "More run_glue.py flags, as one string (e.g. \"--num_train_epochs 4 --max_train_samples 2000\")",
        "nargs": "*"})
    finetune_seed: int = field(default=1, metadata={"help": "Fine-tuning seed of every model"})
    finetune_lr_per_model: bool = field(default=True, metadata={
        "help": "Every model chooses its own fine-tuning LR on its dev split (false: the first seed's model of each "
                "optimizer chooses, the others use its choice: cheaper)"})
    parallel: int = field(default=1, metadata={"help": "Runs at once: one GPU each on a GPU machine; on a CPU the "
                                                       "cores are split between them"})
    plan: Optional[str] = field(default=None, metadata={"help": "Write the commands the current phase still needs "
                                                                "to this file, one per line, instead of running them"})
    pretrain_args: list[str] = field(default_factory=list, metadata={
        "help": "run_pretraining.py flags of every run (on the command line: everything after --)", "nargs": "*"})

    def settings(self) -> dict:
        """What makes two studies the same study (everything but how it is executed)."""
        out = asdict(self)
        for key in ("output_dir", "parallel", "plan"):
            out.pop(key)
        return out

    def grids(self) -> dict[str, list[float]]:
        """Each optimizer's starting LR grid."""
        grids = {}
        for entry in self.lr_grid:
            name, _, values = entry.partition("=")
            try:
                grids[name.strip().lower()] = sorted(float(v) for v in values.split(",") if v.strip())
            except ValueError:
                raise UserError(f"--lr_grid {entry!r}: write OPTIMIZER=LR,LR,... (e.g. adamw=1e-3,3e-3)") from None
        for name in self.optimizers:
            if name not in grids:
                centre, half = DEFAULT_LR.get(name, 1e-3), (self.grid_points - 1) / 2
                grids[name] = [_round(centre * self.grid_factor ** (i - half)) for i in range(self.grid_points)]
        return grids

    def validate(self, check: ArgumentChecker) -> None:
        check.require(bool(self.output_dir), "--output_dir is required (the study's folder)")
        check.require(bool(self.dataset_path), "--dataset_path is required (shards written by prepare_dataset.py)")
        if self.dataset_path:
            check.require((Path(self.dataset_path) / "manifest.json").is_file(),
                          f"--dataset_path {self.dataset_path} holds no manifest.json: give a folder written by "
                          "prepare_dataset.py")
        check.require(bool(self.optimizers), "--optimizers lists none")
        for name in self.optimizers:
            check.choice("--optimizers", name, list(DEFAULT_LR))
        check.require(len(set(self.optimizers)) == len(self.optimizers), "--optimizers lists a name twice")
        for name in self.precisions:
            check.choice("--precisions", name, list(PRECISION_FLAGS))
        check.require(bool(self.precisions), "--precisions lists none")
        try:
            for name, values in self.grids().items():
                check.require(name in self.optimizers, f"--lr_grid names {name!r}, which is not in --optimizers")
                check.require(bool(values) and all(v > 0 for v in values),
                              f"the LR grid of {name} must list values > 0 (got {values})")
        except UserError as exc:
            check.require(False, str(exc))
        check.require(self.grid_points >= 1 and self.grid_factor > 1, "--grid_points must be >= 1 and "
                                                                       "--grid_factor > 1")
        check.require(self.extend >= 0, "--extend must be >= 0")
        check.require((self.max_steps is None) != (self.budget_minutes is None),
                      "give the budget of every run: --max_steps N or --budget_minutes M (one of them)")
        check.require(self.max_steps is None or self.max_steps > 0, "--max_steps must be > 0")
        check.require(self.budget_minutes is None or self.budget_minutes > 0, "--budget_minutes must be > 0")
        check.require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "--seeds must list distinct seeds")
        check.require(self.parallel >= 1, "--parallel must be >= 1")
        check.require(bool(self.finetune_lr_grid) and min(self.finetune_lr_grid) > 0,
                      "--finetune_lr_grid must list values > 0")
        owned = [a.split("=")[0] for a in self.pretrain_args if a.split("=")[0] in OWNED_FLAGS]
        check.require(not owned, f"the study sets {', '.join(sorted(set(owned)))} itself: take them out of the "
                                 "pretraining flags (--optimizers, --lr_grid, --seeds, --max_steps/--budget_minutes, "
                                 "--precisions)")


def _round(value: float) -> float:
    return float(f"{value:.3g}")


@dataclass(frozen=True)
class RunSpec:
    """One pretraining run of the study."""

    optimizer: str  # CONTROL for the untrained export
    precision: str
    lr: float
    seed: int

    @property
    def job(self) -> str:
        if self.optimizer == CONTROL:
            return f"{CONTROL}-{self.precision}-s{self.seed}"
        return f"{self.optimizer}-{self.precision}-lr{self.lr:g}-s{self.seed}"


@dataclass
class RunState:
    """What a run folder says about a run: status is done, diverged, failed, partial or missing."""

    spec: RunSpec
    status: str
    eval_loss: float = math.nan
    why: str = ""


class Study:
    """The phases of the module docstring over one study folder."""

    def __init__(self, args: StudyArguments, stream=None):
        self.args = args
        self.out = Path(args.output_dir).resolve()
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self.failed: dict[str, str] = {}
        self.planned: list[str] = []
        self._lock = threading.Lock()

    # --- runs ------------------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        with self._lock:
            print(f"[study {elapsed // 60:d}:{elapsed % 60:02d}] {message}", file=self.stream, flush=True)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / "runs" / spec.job

    def log_path(self, spec: RunSpec) -> Path:
        return self.out / "logs" / f"{spec.job}.log"

    def state(self, spec: RunSpec) -> RunState:
        folder = self.run_dir(spec)
        if not (folder / runs.METRICS_FILE).is_file():
            return RunState(spec, "missing")
        record = runs.load_run(folder)
        end = record.end or {}
        evals = [e for e in record.evals if "eval_loss" in e]
        loss = float(evals[-1]["eval_loss"]) if evals else math.nan
        if end.get("reason") == "nonfinite_loss":
            return RunState(spec, "diverged", math.inf, "the loss became non-finite")
        if end.get("reason") in FINISHED and (folder / "pretrained" / "config.json").is_file():
            if not math.isfinite(loss):
                return RunState(spec, "diverged", math.inf, f"final eval loss {loss}")
            return RunState(spec, "done", loss)
        return RunState(spec, "partial" if list_checkpoints(folder / "checkpoints") else "missing")

    def argv(self, spec: RunSpec) -> list[str]:
        a = self.args
        budget = ["--max_steps", str(a.max_steps), "--lr_schedule", "step"] if a.max_steps else \
            ["--total_training_time", f"{a.budget_minutes / 60:.6g}", "--early_exit_time_marker",
             f"{a.budget_minutes / 60:.6g}", "--lr_schedule", "time"]
        if spec.optimizer == CONTROL:
            optimizer, budget = ["--optimizer_type", "adamw", "--lr", "1e-3"], \
                ["--max_steps", "0", "--lr_schedule", "constant_step"]
        else:
            optimizer = ["--optimizer_type", spec.optimizer, "--lr", f"{spec.lr:g}"]
        return ["--dataset_path", str(Path(a.dataset_path).resolve()), "--output_dir", str(self.out / "runs"),
                "--job_name", spec.job, *budget, *a.pretrain_args, *optimizer, "--seed", str(spec.seed),
                "--do_validation", *PRECISION_FLAGS[spec.precision], *OPTIMIZER_FLAGS.get(spec.optimizer, [])]

    def command(self, spec: RunSpec) -> list[str]:
        state = self.state(spec)
        resume = ["--load_training_checkpoint", str(self.run_dir(spec)), "--load_checkpoint_id", "latest"] \
            if state.status == "partial" else (["--overwrite_output_dir"] if self.run_dir(spec).exists() else [])
        return [sys.executable, str(ROOT / "run_pretraining.py"), *self.argv(spec), *resume]

    def execute(self, specs: Sequence[RunSpec]) -> dict[RunSpec, RunState]:
        """Run every spec that is not finished (or plan it); the states of all."""
        todo = [s for s in specs if self.state(s).status not in ("done", "diverged")]
        if self.args.plan:
            self.planned += [self._plan_line(s) for s in todo]
            return {s: self.state(s) for s in specs}
        self._pool(todo, self._run)
        return {s: self.state(s) for s in specs}

    def _env(self, slot: int) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        if self.args.parallel > 1:
            if _gpu_count():
                env["CUDA_VISIBLE_DEVICES"] = str(slot % _gpu_count())
            else:
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.args.parallel))
        return env

    def _plan_line(self, spec: RunSpec) -> str:
        command = " ".join(shlex.quote(part) for part in self.command(spec))
        return f"cd {shlex.quote(str(ROOT))} && {command} >> {shlex.quote(str(self.log_path(spec)))} 2>&1"

    def _spawn(self, command: Sequence[str], log: Path, slot: int) -> int:
        """Run ``command`` with its output appended to ``log``; its exit code (stopped if this one is interrupted)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=self._env(slot))
            try:
                return process.wait()
            except BaseException:
                _stop(process)
                raise

    def _pool(self, jobs: Sequence, work) -> None:
        """``work(job, slot)`` for every job, --parallel at once, each with its own slot (GPU / share of cores)."""
        if not jobs:
            return
        slots = list(range(self.args.parallel))

        def in_slot(job):
            with self._lock:
                slot = slots.pop(0)
            try:
                work(job, slot)
            finally:
                with self._lock:
                    slots.append(slot)

        with ThreadPoolExecutor(max_workers=self.args.parallel) as pool:
            futures = [pool.submit(in_slot, job) for job in jobs]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _run(self, spec: RunSpec, slot: int) -> None:
        log = self.log_path(spec)
        command = self.command(spec)
        resumed = "--load_training_checkpoint" in command
        self.say(f"{spec.job}: {'resuming' if resumed else 'running'} (log {log})")
        began = time.monotonic()
        code = self._spawn(command, log, slot)
        state = self.state(spec)
        seconds = time.monotonic() - began
        if state.status == "done":
            self.say(f"{spec.job}: eval loss {state.eval_loss:.4f} ({seconds:.0f}s)")
        elif state.status == "diverged":
            self.say(f"{spec.job}: diverged ({state.why}; {seconds:.0f}s)")
        else:
            last = _last_line(log)
            self.failed[spec.job] = last
            self.say(f"{spec.job}: FAILED (exit code {code}) after {seconds:.0f}s: {last} (log {log})")

    # --- phases ------------------------------------------------------------------------------------------------

    def sweep(self) -> dict[tuple[str, str], dict]:
        """Phase 1 per (optimizer, precision): {"lr": best or None, "grid": {lr: state}}."""
        a, first = self.args, self.args.seeds[0]
        grids = a.grids()
        result = {}
        pending = {(o, p): list(grids[o]) for o in a.optimizers for p in a.precisions}
        states: dict[tuple[str, str], dict[float, RunState]] = {key: {} for key in pending}
        for _ in range(a.extend + 1):
            specs = [RunSpec(o, p, lr, first) for (o, p), lrs in pending.items() for lr in lrs]
            for spec, state in self.execute(specs).items():
                states[(spec.optimizer, spec.precision)][spec.lr] = state
            pending = {}
            for key, grid in states.items():
                more = _edge_extension(grid, a.grid_factor)
                if more is not None and more not in grid:
                    pending[key] = [more]
            if not pending or a.plan and self.planned:
                break
        for key, grid in states.items():
            done = {lr: s for lr, s in grid.items() if s.status == "done"}
            best = min(done, key=lambda lr: done[lr].eval_loss) if done else None
            if best is not None and _edge_extension(grid, a.grid_factor) is not None:
                self.say(f"{key[0]} {key[1]}: the best LR {best:g} is still on the grid's edge after --extend "
                         f"{a.extend}: widen --lr_grid to be sure it is the best")
            result[key] = {"lr": best, "grid": grid}
        return result

    def seed_runs(self, chosen: dict) -> dict[tuple[str, str], list[RunState]]:
        specs = {key: [RunSpec(key[0], key[1], c["lr"], s) for s in self.args.seeds]
                 for key, c in chosen.items() if c["lr"] is not None}
        states = self.execute([s for group in specs.values() for s in group])
        return {key: [states[s] for s in group] for key, group in specs.items()}

    def controls(self) -> dict[str, list[RunState]]:
        if not self.args.control:
            return {}
        specs = {p: [RunSpec(CONTROL, p, 0.0, s) for s in self.args.seeds] for p in self.args.precisions}
        states = self.execute([s for group in specs.values() for s in group])
        return {p: [states[s] for s in group] for p, group in specs.items()}

    def finetune(self, groups: Sequence[Sequence[RunState]]) -> None:
        """run_glue.py for each finished model of each arm (a group: one optimizer's or the control's seeds).

        ``--finetune_lr_per_model`` (default): every model chooses its fine-tuning LR from ``--finetune_lr_grid`` on
        its dev split; else the first seed's model chooses and the arm's other models use its choice. Finished
        fine-tunings are reused."""
        firsts, rest = [], []
        for group in groups:
            done = [s for s in group if s.status == "done"]
            if done:
                firsts += done if self.args.finetune_lr_per_model else done[:1]
                rest += [] if self.args.finetune_lr_per_model else [(s, done[0]) for s in done[1:]]
        self._pool([(s, None) for s in firsts], self._finetune_one)
        self._pool(rest, self._finetune_one)

    def finetune_dir(self, state: RunState) -> Path:
        return self.run_dir(state.spec) / runs.FINETUNE_DIR / self.args.finetune_task

    def _finetune_results(self, state: RunState) -> dict:
        path = self.finetune_dir(state) / runs.RESULTS_FILE
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def _finetune_one(self, job, slot: int) -> None:
        state, chooser = job if isinstance(job, tuple) else (job, None)
        a, output = self.args, self.finetune_dir(state)
        if chooser is None:
            lr_flags = ["--learning_rate_grid", *[f"{v:g}" for v in a.finetune_lr_grid]]
        else:
            chosen = self._finetune_results(chooser).get("learning_rate")
            if chosen is None:
                self.say(f"fine-tuning {state.spec.job}: skipped, {chooser.spec.job} chose no fine-tuning LR")
                return
            lr_flags = ["--learning_rate", f"{chosen:g}"]
        results = self._finetune_results(state)
        if results and (("lr_selection" in results) if chooser is None else
                        results.get("learning_rate") == float(lr_flags[-1])):
            return
        argv = [sys.executable, str(ROOT / "run_glue.py"), "--model_name_or_path", str(self.run_dir(state.spec) / "pretrained"),
                "--task_name", a.finetune_task, "--output_dir", str(output), "--do_train", "--do_eval",
                "--seeds", str(a.finetune_seed), *lr_flags, "--save_strategy", "no", "--report_to", "none",
                "--disable_tqdm", "true", "--overwrite_output_dir",
                *[part for entry in a.finetune_args for part in shlex.split(entry)],
                *PRECISION_FLAGS[state.spec.precision]]
        log = self.out / "logs" / f"finetune-{state.spec.job}.log"
        if a.plan:
            with self._lock:
                self.planned.append(f"cd {shlex.quote(str(ROOT))} && {' '.join(map(shlex.quote, argv))} >> "
                                    f"{shlex.quote(str(log))} 2>&1")
            return
        self.say(f"fine-tuning {state.spec.job} on {a.finetune_task} (log {log})")
        code = self._spawn(argv, log, slot)
        if code:
            self.failed[f"finetune-{state.spec.job}"] = _last_line(log)
            self.say(f"fine-tuning {state.spec.job}: FAILED (exit code {code}): {_last_line(log)}")
        else:
            results = self._finetune_results(state)
            self.say(f"fine-tuned {state.spec.job}: LR {results.get('learning_rate', float('nan')):g}, "
                     f"{a.finetune_task} {results.get('eval_accuracy', results.get('eval_pearson', float('nan'))):.4f}")


def _edge_extension(grid: dict[float, RunState], factor: float) -> Optional[float]:
    """The next LR beyond the edge the best finished run lies on, or None (best inside, or nothing finished).
    A diverged neighbour closes that edge: beyond it lies only divergence."""
    done = {lr: s.eval_loss for lr, s in grid.items() if s.status == "done"}
    if not done or len(grid) < 2:
        return None
    lrs = sorted(grid)
    best = min(done, key=done.get)
    if best == lrs[0]:
        return _round(best / factor)
    if best == lrs[-1]:
        return _round(best * factor)
    return None


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return 0


class StudyLock:
    """One study per folder at a time (an flock: released when the process dies)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            raise UserError(f"another study is running on {self.path.parent} ({owner}): wait for it to finish, or "
                            "use another --output_dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def check_settings(out: Path, settings: dict) -> None:
    """Refuse a folder that holds another study (other settings); record them in a new one."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is damaged: move it away (and the study folder's runs with it)") from None
        if earlier != settings:
            changed = ", ".join(f"{k}: {earlier.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(earlier) | set(settings))
                                if earlier.get(k) != settings.get(k))
            raise UserError(f"{out} holds a study with other settings ({changed}): use a new --output_dir (nothing "
                            "of the earlier study was changed)")
        return
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise UserError(f"--output_dir {out} is not empty and holds no study: give a new or empty folder")
    from pretraining.atomic import write_json_atomic

    write_json_atomic(path, settings)


def check_pretraining_flags(study: Study) -> None:
    """Parse (not run) one run's full run_pretraining.py flags, so a wrong flag stops the study before any run."""
    from pretraining.train.training import PretrainingConfig

    a = study.args
    spec = RunSpec(a.optimizers[0], a.precisions[0], a.grids()[a.optimizers[0]][0], a.seeds[0])
    try:
        config = PretrainingConfig.parse(study.argv(spec))
    except SystemExit:
        raise UserError("the pretraining flags after -- (pretrain_args) are not valid run_pretraining.py flags: see "
                        "the message above") from None
    from pretraining.train.config import check_arguments

    check_arguments(config, world_size=1)


def split_argv(argv: Optional[Sequence[str]]) -> tuple[list[str], list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


@run_main
def main(argv=None) -> Optional[list[dict]]:
    """Run (or continue, or plan) a study; returns the table's rows."""
    head, tail = split_argv(argv)
    (args,) = parse_args([StudyArguments], head)
    args.pretrain_args = [*args.pretrain_args, *tail]
    args.optimizers = [o.lower() for o in args.optimizers]
    check = ArgumentChecker()
    args.validate(check)
    check.raise_if_any()
    if "fp16" in args.precisions and not _gpu_count():
        raise UserError("--precisions fp16 needs a CUDA GPU and none is visible: use fp32 or bf16")
    study = Study(args)
    check_pretraining_flags(study)
    study.out.mkdir(parents=True, exist_ok=True)
    with StudyLock(study.out):
        check_settings(study.out, args.settings())
        try:
            with terminate_as_interrupt():
                return _phases(study)
        except KeyboardInterrupt:
            study.say("interrupted: rerun the same command to continue (finished runs are reused, interrupted ones "
                      "resume from their last checkpoint)")
            raise SystemExit(130) from None


def _phases(study: Study) -> Optional[list[dict]]:
    from pretraining.report import study_report

    a = study.args
    grids = a.grids()
    study.say(f"study into {study.out}: {len(a.optimizers)} optimizer(s) x {len(a.precisions)} precision(s), LR grids "
              + "; ".join(f"{o} {','.join(f'{v:g}' for v in grids[o])}" for o in a.optimizers)
              + f"; seeds {' '.join(map(str, a.seeds))}; "
              + (f"{a.max_steps} steps" if a.max_steps else f"{a.budget_minutes:g} minutes") + " per run")
    chosen = study.sweep()
    if a.plan and study.planned:
        return _write_plan(study, "sweep")
    for (o, p), c in chosen.items():
        study.say(f"{o} {p}: best LR {c['lr']:g}" if c["lr"] is not None else f"{o} {p}: no LR finished")
    seeds = study.seed_runs(chosen)
    controls = study.controls()
    if a.plan and study.planned:
        return _write_plan(study, "seeds and control")
    if a.finetune_task:
        study.finetune([*controls.values(), *seeds.values()])
        if a.plan and study.planned:
            return _write_plan(study, "fine-tuning")
    if a.plan:
        study.say(f"nothing left to plan: every run is finished; the table: {study.out / 'study.md'}")
    rows, table = study_report.write_report(study, chosen, seeds, controls)
    print("\n" + table, flush=True)
    study.say(f"results: {study.out / 'study.md'}, {study.out / 'study.csv'}, {study.out / 'study.png'}")
    if study.failed:
        failed = "; ".join(f"{job}: {why}" for job, why in study.failed.items())
        raise UserError(f"{len(study.failed)} run(s) failed ({failed}). Fix the cause and rerun the same command: "
                        "finished runs are reused")
    return rows


def _write_plan(study: Study, phase: str) -> None:
    path = Path(study.args.plan)
    from pretraining.atomic import atomic_file

    with atomic_file(path, "w") as handle:
        handle.write("\n".join(study.planned) + "\n")
    study.say(f"wrote {len(study.planned)} command(s) of the {phase} phase to {path}: run them (one per line, e.g. a "
              "SLURM array), then rerun this study command to collect them and plan the next phase")


if __name__ == "__main__":
    main()
