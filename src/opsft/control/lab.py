"""`opsft control lab`: every control method x seeds, and d3rlpy's offline-RL baselines, on one dataset, with one
report. The embedded default is a dataset made here (D4RL is not reachable offline; docs/results-control.md);
--data takes a D4RL file or a Minari dataset instead.

    1 data       generate (cached in $OPSFT_CACHE/control) or load the episodes
    2 reference  stage A (BC on every episode) per seed: the `bc` method, and p_ref and the start of the others
    3 methods    stage C of each method per seed, and each baseline per seed; --workers processes at a time
    4 report     report/results.md (table), results.json, returns.png (returns of the data and the curated
                 subset), phi.png (DDT phi of the data under p_ref, all and curated), training_curves.png, index.html

Each run is an `opsft control train` / `baseline` directory under runs/, so a killed lab resumes run by run (and
each run from its last checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..inputs.models import cache_dir
from ..runtime.options import Options, option
from ..runtime.workers import run_each
from .commands import BaselineConfig, TrainConfig, run_baseline, run_train, start
from .lab_report import write_report

METHODS = {  # lab method -> opsft control train options
    "bc": {"method": "bc"}, "bc_transitions": {"method": "bc_transitions"},
    "filtered_bc": {"method": "filtered_bc"}, "iwsft": {"method": "iwsft"},
    "iwsft_step": {"method": "iwsft", "iw_level": "step"}, "sftq": {"method": "sftq"},
    "iwsftq": {"method": "iwsftq"},
}
BASELINES = ("bc", "td3_plus_bc", "iql", "cql")
PROFILES = {
    "tiny": dict(dataset={"kind": "scripted-pendulum", "env": "InvertedPendulum-v5", "seed": 0, "episodes": 40,
                          "max_episode_steps": 100},
                 methods=list(METHODS), baselines=["bc", "td3_plus_bc", "iql"], seeds=[0], reference_steps=60,
                 steps=40, warmup_steps=10, learning_rate=1e-3, baseline_steps=40, eval_episodes=2,
                 max_episode_steps=100, hidden=[32, 32], batch_pairs=64),
    "default": dict(dataset={"kind": "sac-replay", "env": "InvertedDoublePendulum-v5", "seed": 0, "steps": 30_000},
                    methods=list(METHODS), baselines=["bc", "td3_plus_bc", "iql"], seeds=[0, 1, 2],
                    reference_steps=10_000, steps=2_000, warmup_steps=300, learning_rate=4e-5,
                    baseline_steps=10_000, eval_episodes=50, max_episode_steps=None, hidden=[256, 256, 256],
                    batch_pairs=256),
}


@dataclass
class ControlLabConfig(Options):
    out: str = option("runs/control-lab", "output directory (a rerun resumes in it)", output_dir=True)
    profile: str = option("default", "tiny (seconds, for tests) or default (the embedded study)",
                          choices=list(PROFILES))
    data: str | None = option(None, "your episodes instead of the embedded dataset: D4RL .hdf5, .npz or "
                                    "minari:<id> (needs --env)")
    env: str | None = option(None, "gymnasium environment id of --data (e.g. Hopper-v5)")
    methods: list[str] | None = option(None, "methods: " + ", ".join(METHODS), choices=list(METHODS))
    baselines: list[str] | None = option(None, "d3rlpy baselines: " + ", ".join(BASELINES), choices=list(BASELINES))
    seeds: list[int] | None = option(None, "seeds (each: its own reference, methods and baselines)")
    reference_steps: int | None = option(None, "stage A steps", at_least=1)
    steps: int | None = option(None, "stage C steps", at_least=1)
    baseline_steps: int | None = option(None, "gradient steps of each baseline", at_least=1)
    eval_episodes: int | None = option(None, "evaluation episodes per run", at_least=1)
    workers: int = option(2, "runs trained at once, one process and one torch thread each", at_least=1)
    overwrite: bool = option(False, "discard an earlier lab in --out instead of resuming")
    progress: bool = option(True, "show progress")

    def rules(self):
        return [(self.data is None or self.env is not None, "--data needs --env (evaluation and action box)")]

    def resolved(self) -> dict:
        settings = dict(PROFILES[self.profile], profile=self.profile)
        for name in ("methods", "baselines", "seeds", "reference_steps", "steps", "baseline_steps",
                     "eval_episodes"):
            if getattr(self, name) is not None:
                settings[name] = getattr(self, name)
        if self.data is not None:
            settings["dataset"] = {"data": self.data, "env": self.env}
        return settings


def run_control_lab(config: ControlLabConfig) -> dict:
    settings = config.resolved()
    out = start(config, settings)
    started = time.perf_counter()
    data, env_id = dataset_path(settings["dataset"], config.workers, config.progress)
    print(f"[control lab] data: {data} ({env_id})", flush=True)
    references = {seed: out / "runs" / f"bc-seed{seed}" for seed in settings["seeds"]}
    _run_all([("train", _train_config(settings, data, env_id, "bc", seed, out)) for seed in settings["seeds"]],
             config.workers, "reference (stage A)", config.progress)
    jobs = [("train", _train_config(settings, data, env_id, method, seed, out,
                                    reference=references[seed] / "reference.pt"))
            for method in settings["methods"] if method != "bc" for seed in settings["seeds"]]
    jobs += [("baseline", BaselineConfig(algorithm=name, data=data, env=env_id, seed=seed, steps=settings[
        "baseline_steps"], out=str(out / "runs" / f"d3rlpy_{name}-seed{seed}"), eval_episodes=settings[
        "eval_episodes"], max_episode_steps=settings["max_episode_steps"], progress=False))
             for name in settings["baselines"] for seed in settings["seeds"]]
    _run_all(jobs, config.workers, "methods and baselines", config.progress)
    report = write_report(out, settings, data, env_id, references[settings["seeds"][0]] / "reference.pt")
    print((out / "report" / "results.md").read_text())
    print(f"[control lab] report: {out / 'report' / 'index.html'} ({time.perf_counter() - started:.0f} s in this "
          f"invocation)")
    return report


def dataset_path(dataset: dict, workers: int, progress: bool) -> tuple[str, str]:
    """(the episodes' path or minari id, the environment id): the user's, or the generated one (made once)."""
    if "data" in dataset:
        return dataset["data"], dataset["env"]
    from .generate import generated

    return str(generated(dataset, cache_dir() / "control", workers=workers, progress=progress)), dataset["env"]


def _train_config(settings: dict, data: str, env_id: str, method: str, seed: int, out: Path, reference=None):
    return TrainConfig(data=data, env=env_id, out=str(out / "runs" / f"{method}-seed{seed}"), seed=seed,
                       reference=None if reference is None else str(reference),
                       reference_steps=settings["reference_steps"], steps=settings["steps"],
                       warmup_steps=settings["warmup_steps"], learning_rate=settings["learning_rate"],
                       hidden=settings["hidden"], batch_pairs=settings["batch_pairs"],
                       eval_episodes=settings["eval_episodes"], max_episode_steps=settings["max_episode_steps"],
                       progress=False, **METHODS[method])


def _run_all(jobs: list, workers: int, what: str, progress: bool) -> None:
    """Each (kind, config) job, `workers` processes at a time; finished runs are reused."""
    todo = [job for job in jobs if not (Path(job[1].out) / "summary.json").exists()]
    print(f"[control lab] {what}: {len(jobs) - len(todo)} of {len(jobs)} runs done earlier; running {len(todo)}",
          flush=True)
    with tqdm(total=len(todo), unit="run", desc=what, disable=not progress) as bar:
        for job, _ in zip(todo, run_each(_run_job, todo, workers)):
            bar.write(f"[control lab]   done: {Path(job[1].out).name}")
            bar.update(1)


def _run_job(job) -> dict:
    kind, config = job
    return run_train(config) if kind == "train" else run_baseline(config)
