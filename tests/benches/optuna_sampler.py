"""Optuna's TPESampler as a lockstep ask/tell service for the sweep benchmark (sweep.rs).

The benchmark owns the problems and the schedule (which trial finishes when); this script only
asks Optuna for points and tells it the values, one JSON object per line each way:

  -> {"study": {"space": [...], "seed": 0, "multivariate": true}}   <- {}
  -> {"ask": 7}                   <- {"point": [...], "secs": 0.0031}
  -> {"tell": 7, "value": 1.25}   <- {}

`secs` is the time of `study.ask` alone: the sampler's work for that trial. A point holds each
parameter's value, a categorical's as the index of its choice.
"""

import json
import sys
import time
import warnings

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution


def distribution(p):
    kind = p["kind"]
    if kind == "uniform":
        return FloatDistribution(p["low"], p["high"])
    if kind == "log_uniform":
        return FloatDistribution(p["low"], p["high"], log=True)
    if kind == "int":
        if p.get("log"):
            return IntDistribution(p["low"], p["high"], log=True)
        return IntDistribution(p["low"], p["high"], step=p.get("step", 1))
    if kind == "categorical":
        return CategoricalDistribution(list(range(len(p["choices"]))))
    raise ValueError(f"unknown distribution kind {kind!r}")


def main():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    study = None
    names = []
    dists = {}
    trials = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if "study" in msg:
            spec = msg["study"]
            names = [f"p{i}" for i in range(len(spec["space"]))]
            dists = {n: distribution(p) for n, p in zip(names, spec["space"])}
            kwargs = {"seed": spec["seed"]}
            # Left out, multivariate and constant_liar take Optuna's defaults.
            if not spec["multivariate"]:
                kwargs["multivariate"] = False
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(**kwargs))
            trials = {}
            reply = {}
        elif "ask" in msg:
            start = time.perf_counter()
            trial = study.ask(dists)
            secs = time.perf_counter() - start
            trials[msg["ask"]] = trial
            reply = {"point": [float(trial.params[n]) for n in names], "secs": secs}
        elif "tell" in msg:
            study.tell(trials.pop(msg["tell"]), msg["value"])
            reply = {}
        else:
            raise ValueError(f"unknown message {line!r}")
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
