"""The seed's customized learning-rate curves and optimizers, read from its INI conf files.

``--curve customized --curve_conf_file F``: after the (linear) warmup, the learning rate is
``curve(lr, t) / lr`` for ``t`` = position minus warmup, in the seed's units: optimizer steps
for step schedules, **hours** for ``--lr_schedule time`` (the seed measured time in hours);
0 once the schedule's total is reached. ``F`` has ``[general] type = NAME`` and the curve's
parameters under ``[hyperparams]``; every curve also takes ``activation_point`` (constant LR
before it, the curve's time counted from it) and ``restarting_points`` (the curve restarts at
each). Curves: :data:`CURVES`.

``--optimizer_type customized --optimizer_conf_file F``: ``[general] type`` = ``sgd``
(``[hyperparams] momentum``, ``nesterov``), ``adam``, ``adamw`` (the usual ``--adam_*``
flags) or ``dummy`` (never changes a weight: a baseline of the data and loop alone).
"""

from __future__ import annotations

import math
from configparser import ConfigParser, Error as ConfigError
from pathlib import Path
from typing import Callable

from pretraining.errors import UserError

Curve = Callable[[float, float], float]  # (init_lr, t) -> learning rate


def read_conf(path, flag: str) -> ConfigParser:
    """The INI file named by ``flag``, with its ``[general] type``; UserError when missing or malformed."""
    if not path:
        raise UserError(f"{flag} is required by the customized {'curve' if 'curve' in flag else 'optimizer'}: "
                        "give an INI file with [general] type = ... and [hyperparams]")
    if not Path(path).is_file():
        raise UserError(f"{flag} {path} does not exist")
    conf = ConfigParser()
    try:
        conf.read(path)
        conf.get("general", "type")
    except ConfigError as exc:
        raise UserError(f"{flag} {path} is not a valid conf file ({exc}); it needs [general] type = ...") from None
    return conf


def _get(conf: ConfigParser, kind, key: str, path: str):
    try:
        return kind(conf.get("hyperparams", key))
    except ConfigError:
        raise UserError(f"{path}: [hyperparams] {key} is missing") from None
    except ValueError:
        raise UserError(f"{path}: [hyperparams] {key} = {conf.get('hyperparams', key)!r} is not a number") from None


def _ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def _shift(conf: ConfigParser) -> Callable[[float], float]:
    """activation_point and restarting_points: the curve's own time for a position ``t``."""
    activation = conf.getint("hyperparams", "activation_point", fallback=0)
    restarts = _ints(conf.get("hyperparams", "restarting_points", fallback=""))

    def local(t: float) -> float:
        t = max(0.0, t - activation)
        latest = max((p for p in restarts if t >= p), default=None)
        return t - latest if latest is not None else t

    return local


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise UserError(f"{path}: {message}")


def inverse_time_decay(conf: ConfigParser, path: str) -> Curve:
    lam = _get(conf, float, "lambda", path)
    return lambda lr, t: lr / (1 + lr * t * lam)


def exponential_decay(conf: ConfigParser, path: str) -> Curve:
    step, rate = _get(conf, float, "decay_step", path), _get(conf, float, "decay_rate", path)
    _check(step > 0 and 0 <= rate <= 1, path, "needs decay_step > 0 and decay_rate in [0, 1]")
    return lambda lr, t: lr * rate ** (t / step)


def piecewise_constant(conf: ConfigParser, path: str) -> Curve:
    starts = _ints(conf.get("hyperparams", "starting_points", fallback=""))
    factors = [float(f) for f in conf.get("hyperparams", "factors", fallback="").split(",") if f.strip()]
    _check(len(starts) == len(factors) and starts == sorted(starts), path,
           "needs as many sorted starting_points as factors")

    def curve(lr, t):
        factor = 1.0
        for start, value in zip(starts, factors):
            if t >= start:
                factor = value
        return lr * factor

    return curve


def cosine_decay(conf: ConfigParser, path: str) -> Curve:
    """Cosine with warm restarts: segments of t_0 + 1, t_0 * t_mul + 1, ... positions (the seed's counting)."""
    t_0, t_mul = _get(conf, float, "t_0", path), _get(conf, float, "t_mul", path)
    min_lr = _get(conf, float, "min_lr", path)
    power = conf.getfloat("hyperparams", "power", fallback=1.0)
    _check(t_0 >= 0 and t_mul >= 1, path, "needs t_0 >= 0 and t_mul >= 1")

    def curve(lr, t):
        _check(min_lr <= lr, path, f"min_lr {min_lr} must not exceed the learning rate {lr}")
        span, start = t_0, 0.0
        while t >= start + span + 1 and span > 0:
            start, span = start + span + 1, span * t_mul
        fraction = 0.0 if span == 0 else (t - start) / span
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * fraction))) ** power

    return curve


def poly_remain_time_decay(conf: ConfigParser, path: str) -> Curve:
    rate, total = _get(conf, float, "decay_rate", path), _get(conf, float, "num_iter", path)
    _check(rate >= 0 and total > 0, path, "needs decay_rate >= 0 and num_iter > 0")
    return lambda lr, t: lr * max(0.0, 1 - t / total) ** rate


def step_decay(conf: ConfigParser, path: str) -> Curve:
    """num_interval equal intervals of num_iter, the LR divided by decay_rate at each."""
    rate, intervals = _get(conf, float, "decay_rate", path), _get(conf, int, "num_interval", path)
    total = _get(conf, float, "num_iter", path)
    _check(rate > 1 and intervals > 0 and total > 0, path, "needs decay_rate > 1, num_interval > 0, num_iter > 0")
    return lambda lr, t: lr * (1 / rate) ** int(t / (total / intervals))


def elastic_step_decay(conf: ConfigParser, path: str) -> Curve:
    """Intervals shrinking by interval_shrink_rate; the LR halves per interval from interval cr_k - 1 on."""
    shrink, total = _get(conf, float, "interval_shrink_rate", path), _get(conf, float, "num_iter", path)
    cr_k = _get(conf, int, "cr_k", path)
    _check(shrink > 1 and total > 0 and cr_k >= 2, path, "needs interval_shrink_rate > 1, num_iter > 0, cr_k >= 2")
    a = 1 / shrink

    def curve(lr, t):
        if t >= total:
            return 0.0
        k = int(math.floor(math.log(1 - t / total) / math.log(a)) + 0.5)
        return lr * min(min(1.0, 0.5 / a) ** (k - cr_k + 1), 1.0)

    return curve


def linear_decay(conf: ConfigParser, path: str) -> Curve:
    total = _get(conf, float, "num_iter", path)
    _check(total > 0, path, "needs num_iter > 0")
    return lambda lr, t: lr * (total - t) / total


#: ``[general] type`` -> builder(conf, path) -> curve(init_lr, t)
CURVES: dict[str, Callable[[ConfigParser, str], Curve]] = {
    "inverse_time_decay": inverse_time_decay, "exponential_decay": exponential_decay,
    "piecewise_constant": piecewise_constant, "cosine_decay": cosine_decay,
    "poly_remain_time_decay": poly_remain_time_decay, "step_decay": step_decay,
    "elastic_step_decay": elastic_step_decay, "linear_decay": linear_decay,
}


def load_curve(path: str) -> Curve:
    """The curve of a ``--curve_conf_file``, its activation/restart points applied."""
    conf = read_conf(path, "--curve_conf_file")
    name = conf.get("general", "type")
    if name not in CURVES:
        raise UserError(f"{path}: curve type {name!r} is not one of: {', '.join(CURVES)} (the seed's piecewise_"
                        "inverse_time and continuous_eigencurve are not supported)")
    curve, local = CURVES[name](conf, path), _shift(conf)
    return lambda lr, t: curve(lr, local(t))


def optimizer_spec(path: str) -> tuple[str, dict]:
    """(type, extra keyword arguments) of an ``--optimizer_conf_file``: sgd/adam/adamw/dummy."""
    conf = read_conf(path, "--optimizer_conf_file")
    name = conf.get("general", "type")
    if name == "sgd":
        momentum = _get(conf, float, "momentum", path)
        _check(0 <= momentum <= 1, path, f"momentum must be in [0, 1] (got {momentum})")
        nesterov = conf.get("hyperparams", "nesterov", fallback="no").strip().lower() not in ("no", "false")
        return name, {"momentum": momentum, "nesterov": nesterov}
    if name in ("adam", "adamw", "dummy"):
        return name, {}
    raise UserError(f"{path}: optimizer type {name!r} is not one of: sgd, adam, adamw, dummy")
