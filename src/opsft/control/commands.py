"""`opsft control ...`: generate, train, eval, score and baseline, each a config (flags or YAML) and the function
that runs it. Thin glue over the library (data, training, evaluation, curation, baselines); every command writes
into its --out, refuses an --out holding a run with other settings, and resumes an interrupted run."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..inputs.models import cache_dir
from ..runtime.errors import OpsftError
from ..runtime.options import REQUIRED, Options, option
from .curation import AUTHORS_TIERS, percentile_tiers, quality, top_fraction
from .data import Episodes, load_episodes, reference_scores
from .evaluation import return_summary, rollout_returns
from .objectives import ObjectiveConfig
from .plots import plot_phi
from .policy import GaussianPolicy, load_policy, save_policy
from .training import Checkpoint, Schedule, new_policy, train

DATA_HELP = "episodes: a D4RL .hdf5, an .npz in D4RL layout, or minari:<id> (the local Minari store)"


def start(config, settings: dict | None = None) -> Path:
    """The run's output directory (config.out), holding its settings (`settings`, or every option the results
    depend on); a rerun with the same settings resumes, other settings refuse, --overwrite starts again."""
    if settings is None:
        skip = ("out", "threads", "checkpoint_every", "workers", "overwrite", "progress")
        settings = {k: v for k, v in asdict(config).items() if k not in skip}
    out, overwrite = Path(config.out), config.overwrite
    saved = out / "settings.json"
    if overwrite and saved.exists():
        for item in out.iterdir():
            if not item.name.startswith("."):  # the lock file stays
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(settings)):
        raise OpsftError(f"{out} holds a run with other settings ({saved}); use another --out or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=2) + "\n")
    return out


def action_box(env_id: str | None) -> tuple[list[float], list[float]]:
    """The environment's action bounds (low, high), or [-1, 1] (D4RL's tasks) without one."""
    if env_id is None:
        return [-1.0], [1.0]
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise OpsftError(f"--env {env_id}: {e}") from None
    low, high = env.action_space.low.astype(float).tolist(), env.action_space.high.astype(float).tolist()
    env.close()
    return low, high


def evaluate(actor, env_id: str, episodes: int, seed: int, *, scores=None, max_episode_steps=None,
             progress: bool = True, desc: str = "evaluating") -> dict:
    """Returns of `episodes` rollouts (their summary, and the D4RL normalised score where the task has one)."""
    with tqdm(total=episodes, unit="episode", desc=desc, disable=not progress) as bar:
        returns = rollout_returns(actor, env_id, episodes, seed=seed, max_episode_steps=max_episode_steps,
                                  progress=bar)
    result = {"env": env_id, "seed": seed, "returns": returns.tolist(), "return": return_summary(returns)}
    scores = scores or reference_scores(env_id)
    if scores is not None:
        low, high = scores
        result["normalised_score"] = return_summary(100 * (returns - low) / (high - low))
        result["reference_scores"] = list(scores)
    return result


# ---- generate -----------------------------------------------------------------------------------------------------

@dataclass
class GenerateConfig(Options):
    kind: str = option("scripted-pendulum", "scripted-pendulum (seconds), sac-replay (the replay buffer of a SAC "
                                            "run) or sac-rollout (episodes of its final policy)",
                       choices=["scripted-pendulum", "sac-replay", "sac-rollout"])
    env: str = option("InvertedPendulum-v5", "gymnasium environment id (the scripted set: InvertedPendulum-v5)")
    seed: int = option(0, "seed of the SAC run, the resets and the action noise")
    steps: int = option(20_000, "environment steps of the SAC run (sac-*)", at_least=1)
    episodes: int = option(200, "episodes (scripted-pendulum, sac-rollout)", at_least=1)
    max_episode_steps: int | None = option(None, "time limit per episode (default: the environment's)", at_least=1)
    workers: int = option(1, "processes for the rollouts (one per core)", at_least=1)
    cache: str | None = option(None, "where datasets are kept (default: $OPSFT_CACHE/control)", output_dir=True)
    progress: bool = option(True, "show progress bars")

    def __post_init__(self):
        if self.cache is None:
            self.cache = str(cache_dir() / "control")
        super().__post_init__()

    def spec(self) -> dict:
        spec = {"kind": self.kind, "env": self.env, "seed": self.seed}
        if self.kind != "scripted-pendulum":
            spec["steps"] = self.steps
        if self.kind != "sac-replay":
            spec["episodes"] = self.episodes
        if self.max_episode_steps:
            spec["max_episode_steps"] = self.max_episode_steps
        return spec


def run_generate(config: GenerateConfig) -> Path:
    from .generate import generated

    torch.set_num_threads(1)
    path = generated(config.spec(), Path(config.cache), workers=config.workers, progress=config.progress)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    r = manifest["returns"]
    print(f"{path}\n  {manifest['episodes']} episodes, {manifest['transitions']} transitions; return mean "
          f"{r['mean']:.1f} (min {r['min']:.1f}, median {r['median']:.1f}, max {r['max']:.1f}); made in "
          f"{manifest['seconds']:.0f} s; manifest: {path.parent / 'manifest.json'}")
    return path


# ---- train --------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class TrainConfig(ObjectiveConfig):  # the objective's options (method, iw_*, ema_decay), then these
    data: str = option(REQUIRED, DATA_HELP)
    out: str = option("runs/control/train", "output directory (a rerun resumes in it)", output_dir=True)
    env: str | None = option(None, "gymnasium environment id (e.g. Hopper-v5): the action box, the normalised "
                                   "score and the evaluation")
    curation: str = option("tiers", "the episodes stage C trains on: tiers (percentile tiers of return, "
                                     "concatenated), top (the best --top-fraction) or all",
                           choices=["tiers", "top", "all"])
    tiers: list[float] = option(None, "percentiles of return for --curation tiers (default: 90 95 98)",
                                factory=lambda: list(AUTHORS_TIERS))
    top_fraction: float = option(0.1, "share of episodes kept by --curation top", above=0, at_most=1)
    reference: str | None = option(None, "a stage-A policy (reference.pt of another run) to start from and weigh "
                                         "against; default: train it here")
    reference_steps: int = option(10_000, "stage A (BC on all episodes): steps", at_least=1)
    reference_learning_rate: float = option(1e-3, "stage A: Adam learning rate", above=0)
    steps: int = option(2_000, "stage C: steps", at_least=1)
    learning_rate: float = option(4e-5, "stage C: peak Adam learning rate (cosine to 0)", above=0)
    warmup_steps: int = option(300, "stage C: linear warm-up steps", at_least=0)
    batching: str = option("sampled", "sampled (episode, step) pairs (the CPU default) or whole padded episodes "
                                      "(the authors'; for GPUs)", choices=["sampled", "episode"])
    batch_pairs: int = option(256, "pairs per step (sampled batching)", at_least=1)
    reference_batch_episodes: int = option(128, "stage A: episodes per step (episode batching)", at_least=1)
    batch_episodes: int = option(256, "stage C: episodes per step (episode batching)", at_least=1)
    refresh_every: int = option(250, "sampled iw-SFT: episode weights recomputed every this many steps", at_least=1)
    hidden: list[int] = option(None, "MLP widths (default: 256 256 256)", factory=lambda: [256, 256, 256])
    seed: int = option(0, "initialisation and batch draws")
    threads: int = option(1, "torch threads: small MLPs run fastest on one (docs/control.md)", at_least=1)
    eval_episodes: int = option(100, "evaluation episodes after training (0: none; needs --env)", at_least=0)
    eval_seed: int = option(1_000_000, "episode i of the evaluation starts from reset(seed + i)")
    max_episode_steps: int | None = option(None, "time limit of evaluation episodes (default: the environment's)",
                                           at_least=1)
    checkpoint_every: int = option(500, "steps between saved states (a killed run resumes from the last)",
                                   at_least=1)
    log_every: int = option(50, "steps between entries of the training log", at_least=1)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        return [(self.iw_level != "step_padded" or self.batching == "episode",
                 "--iw-level step_padded counts padding: use it with --batching episode"),
                (self.eval_episodes == 0 or self.env is not None, "--eval-episodes needs --env (or give 0)")]

    def objective(self) -> ObjectiveConfig:
        return ObjectiveConfig(**{f.name: getattr(self, f.name) for f in fields(ObjectiveConfig)})


def curated_indices(returns, curation: str, tiers=AUTHORS_TIERS, fraction: float = 0.1) -> np.ndarray:
    if curation == "tiers":
        return percentile_tiers(returns, tiers)
    if curation == "top":
        return top_fraction(returns, fraction)
    return np.arange(len(returns))


def begin(config) -> tuple[Path, Episodes, list[float], list[float]]:
    """A train or baseline run's start: its threads, output directory, episodes and action box."""
    torch.set_num_threads(config.threads)
    out = start(config)
    return out, load_episodes(config.data, config.env), *action_box(config.env)


def run_train(config: TrainConfig) -> dict:
    out, episodes, low, high = begin(config)
    if (out / "summary.json").exists():  # finished earlier
        return _print_summary(out, json.loads((out / "summary.json").read_text()))
    chosen = np.arange(len(episodes))
    if config.method == "bc":  # BC is stage A itself
        policy = _reference(config, episodes, out, low, high)
    elif config.method == "bc_transitions":  # stage A, each transition counted once
        policy = _stage_a(config, episodes, out / "policy_stage_a", low, high, "bc_transitions")
    else:
        chosen = curated_indices(episodes.returns, config.curation, config.tiers, config.top_fraction)
        policy = _stage_c(config, episodes, chosen, _reference(config, episodes, out, low, high), out)
    summary = {"method": config.method, "data": config.data, "episodes": len(episodes),
               "skipped": episodes.skipped, "trained_on": {"episodes": len(chosen),
                                                           "distinct": int(len(np.unique(chosen)))},
               "data_returns": return_summary(episodes.returns), "train_seconds": round(sum(
                   torch.load(state, weights_only=False)["seconds"] for state in out.glob("*.state.pt")), 1)}
    save_policy(policy, out / "policy.pt", env=config.env, method=config.method)
    if config.eval_episodes:
        summary["eval"] = _cached_eval(out / "eval.json", policy, config.env, config.eval_episodes, config.eval_seed,
                                       episodes.reference_scores, config.max_episode_steps, config.progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(out, summary)
    return summary


def _reference(config: TrainConfig, episodes: Episodes, out: Path, low, high) -> GaussianPolicy:
    if config.reference:
        policy, _ = load_policy(config.reference)
        if policy.shape["observation_dim"] != episodes.observations[0].shape[1]:
            raise OpsftError(f"--reference {config.reference}: made for observations of size "
                             f"{policy.shape['observation_dim']}, the data have {episodes.observations[0].shape[1]}")
        return policy
    return _stage_a(config, episodes, out / "reference", low, high, "bc")


def _stage_a(config: TrainConfig, episodes: Episodes, stem: Path, low, high, method: str) -> GaussianPolicy:
    """BC on every episode (the reference, p_ref), or the saved one."""
    final = stem.with_suffix(".pt")
    if final.exists():
        return load_policy(final)[0]
    policy = new_policy(episodes, config.hidden, low, high, seed=config.seed)
    schedule = Schedule(steps=config.reference_steps, learning_rate=config.reference_learning_rate,
                        batching=config.batching, batch_episodes=config.reference_batch_episodes,
                        batch_pairs=config.batch_pairs)
    with tqdm(total=schedule.steps, unit="step", desc=f"stage A ({method})", disable=not config.progress) as bar:
        log = train(policy, episodes, np.arange(len(episodes)), ObjectiveConfig(method=method), schedule,
                    seed=config.seed, log_every=config.log_every, progress=bar,
                    checkpoint=Checkpoint(stem.with_suffix(".state.pt"), config.checkpoint_every))
    _write_log(stem.with_suffix(".log.jsonl"), log)
    save_policy(policy, final, env=config.env, method=method)
    return policy


def _stage_c(config: TrainConfig, episodes: Episodes, chosen, reference: GaussianPolicy, out: Path):
    """The method on the curated episodes, from the reference (kept frozen as p_ref)."""
    import copy

    policy = copy.deepcopy(reference).requires_grad_(True)
    schedule = Schedule(steps=config.steps, learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
                        cosine=True, batching=config.batching, batch_episodes=config.batch_episodes,
                        batch_pairs=config.batch_pairs, refresh_every=config.refresh_every)
    with tqdm(total=schedule.steps, unit="step", desc=f"stage C ({config.method})",
              disable=not config.progress) as bar:
        log = train(policy, episodes, chosen, config.objective(), schedule, reference=reference.requires_grad_(False),
                    quality=quality(episodes.returns), seed=config.seed + 1, log_every=config.log_every,
                    progress=bar, checkpoint=Checkpoint(out / "policy.state.pt", config.checkpoint_every))
    _write_log(out / "train_log.jsonl", log)
    return policy


def _write_log(path: Path, log: list[dict]) -> None:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in log))


def _cached_eval(path: Path, actor, env_id, episodes, seed, scores, max_episode_steps, progress) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    result = evaluate(actor, env_id, episodes, seed, scores=scores, max_episode_steps=max_episode_steps,
                      progress=progress)
    path.write_text(json.dumps(result) + "\n")
    return result


def _print_summary(out: Path, summary: dict) -> dict:
    line = f"{summary['method']}: trained on {summary['trained_on']['episodes']} episodes " \
           f"({summary['trained_on']['distinct']} distinct) of {summary['episodes']}"
    if "eval" in summary:
        r = summary["eval"]["return"]
        line += f"; return {r['mean']:.1f} ± {r['ci95_half_width']:.1f} (95 % CI, {r['episodes']} episodes)"
        if "normalised_score" in summary["eval"]:
            line += f", normalised score {summary['eval']['normalised_score']['mean']:.1f}"
    print(f"{line}\n  {out / 'summary.json'}")
    return summary


# ---- eval ---------------------------------------------------------------------------------------------------------

@dataclass
class EvalConfig(Options):
    policy: str = option(REQUIRED, "a policy.pt (opsft control train) or a d3rlpy algorithm.d3 (baseline)")
    env: str = option(REQUIRED, "gymnasium environment id")
    out: str = option("runs/control/eval", "output directory", output_dir=True)
    episodes: int = option(100, "evaluation episodes", at_least=1)
    seed: int = option(1_000_000, "episode i starts from reset(seed + i)")
    max_episode_steps: int | None = option(None, "time limit per episode (default: the environment's)", at_least=1)
    threads: int = option(1, "torch threads", at_least=1)
    progress: bool = option(True, "show progress bars")


def load_actor(path: str):
    if path.endswith(".d3"):
        from .baselines import baseline_actor, load_baseline

        return baseline_actor(load_baseline(Path(path)))
    return load_policy(path)[0]


def run_eval(config: EvalConfig) -> dict:
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate(load_actor(config.policy), config.env, config.episodes, config.seed,
                      max_episode_steps=config.max_episode_steps, progress=config.progress)
    result["policy"] = config.policy
    (out / "eval.json").write_text(json.dumps(result) + "\n")
    r = result["return"]
    print(f"{config.policy} in {config.env}: return {r['mean']:.1f} ± {r['ci95_half_width']:.1f} (95 % CI over "
          f"{r['episodes']} episodes)" + (f", normalised score {result['normalised_score']['mean']:.1f}"
                                          if "normalised_score" in result else ""))
    return result


# ---- score (DDT for policies) -------------------------------------------------------------------------------------

@dataclass
class ScoreConfig(Options):
    policy: str = option(REQUIRED, "a policy.pt (e.g. a run's reference.pt: p_ref)")
    data: str = option(REQUIRED, DATA_HELP)
    out: str = option("runs/control/score", "output directory", output_dir=True)
    env: str | None = option(None, "gymnasium environment id (names the task where the data do not)")
    curation: str = option("tiers", "also score the curated subset: tiers, top or all (no subset)",
                           choices=["tiers", "top", "all"])
    tiers: list[float] = option(None, "percentiles for --curation tiers", factory=lambda: list(AUTHORS_TIERS))
    top_fraction: float = option(0.1, "share kept by --curation top", above=0, at_most=1)
    threads: int = option(1, "torch threads", at_least=1)
    progress: bool = option(True, "show progress bars")


@torch.no_grad()
def episode_phi(policy: GaussianPolicy, episodes: Episodes) -> list[np.ndarray]:
    """DDT phi_t = log pi(a_t | s_t) + H(pi(. | s_t)) of every step, per episode (nats)."""
    return [policy.phi(torch.from_numpy(o), torch.from_numpy(a)).double().numpy()
            for o, a in zip(episodes.observations, episodes.actions)]


def phi_statistics(per_episode: list[np.ndarray]) -> dict:
    """Mean phi over steps (with its standard error), and the spread of per-episode means."""
    steps = np.concatenate(per_episode)
    means = np.array([p.mean() for p in per_episode])
    return {"episodes": len(per_episode), "steps": int(len(steps)), "phi_mean": float(steps.mean()),
            "phi_sem": float(steps.std(ddof=1) / np.sqrt(len(steps))) if len(steps) > 1 else 0.0,
            "episode_phi_mean": {"mean": float(means.mean()), "median": float(np.median(means)),
                                 "p05": float(np.quantile(means, 0.05)), "p95": float(np.quantile(means, 0.95))}}


def run_score(config: ScoreConfig) -> dict:
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    policy, _ = load_policy(config.policy)
    episodes = load_episodes(config.data, config.env)
    per_episode = episode_phi(policy, episodes)
    result = {"policy": config.policy, "data": config.data, "all": phi_statistics(per_episode)}
    curated = None
    if config.curation != "all":
        curated = curated_indices(episodes.returns, config.curation, config.tiers, config.top_fraction)
        result["curated"] = phi_statistics([per_episode[i] for i in curated])
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_phi(per_episode, curated, out / "phi_hist.png", title=f"{config.data} under {config.policy}")
    for name in ("all", "curated"):
        if name in result:
            s = result[name]
            print(f"{name}: phi_mean {s['phi_mean']:+.3f} ± {s['phi_sem']:.3f} nats per step over {s['steps']} steps "
                  f"of {s['episodes']} episodes (0: the policy's own actions)")
    print(f"  {out / 'summary.json'}, {out / 'phi_hist.png'}")
    return result


# ---- baseline -----------------------------------------------------------------------------------------------------

@dataclass
class BaselineConfig(Options):
    data: str = option(REQUIRED, DATA_HELP)
    algorithm: str = option("td3_plus_bc", "d3rlpy's bc, td3_plus_bc, iql or cql (slow on a CPU)",
                            choices=["bc", "td3_plus_bc", "iql", "cql"])
    env: str | None = option(None, "gymnasium environment id: the action box and the evaluation")
    out: str = option("runs/control/baseline", "output directory (a rerun resumes in it)", output_dir=True)
    steps: int = option(100_000, "gradient steps", at_least=1)
    batch_size: int | None = option(None, "transitions per step (default: d3rlpy's, 256 for TD3+BC and IQL)",
                                    at_least=1)
    seed: int = option(0, "d3rlpy's seed")
    threads: int = option(1, "torch threads", at_least=1)
    checkpoint_every: int = option(2_000, "steps between saved states", at_least=1)
    eval_episodes: int = option(100, "evaluation episodes after training (0: none; needs --env)", at_least=0)
    eval_seed: int = option(1_000_000, "episode i of the evaluation starts from reset(seed + i)")
    max_episode_steps: int | None = option(None, "time limit of evaluation episodes", at_least=1)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        return [(self.eval_episodes == 0 or self.env is not None, "--eval-episodes needs --env (or give 0)")]


def run_baseline(config: BaselineConfig) -> dict:
    from .baselines import baseline_actor, train_baseline

    out, episodes, low, high = begin(config)
    if (out / "summary.json").exists():  # finished earlier
        return _print_summary(out, json.loads((out / "summary.json").read_text()))
    with tqdm(total=config.steps, unit="step", desc=config.algorithm, disable=not config.progress) as bar:
        algorithm = train_baseline(config.algorithm, episodes, out, steps=config.steps, seed=config.seed,
                                   action_low=low, action_high=high, checkpoint_every=config.checkpoint_every,
                                   batch_size=config.batch_size, progress=bar)
    summary = {"method": config.algorithm, "data": config.data, "episodes": len(episodes),
               "skipped": episodes.skipped, "trained_on": {"episodes": len(episodes), "distinct": len(episodes)},
               "train_seconds": round(json.loads((out / "algorithm_state.json").read_text())["seconds"], 1)}
    if config.eval_episodes:
        summary["eval"] = _cached_eval(out / "eval.json", baseline_actor(algorithm), config.env,
                                       config.eval_episodes, config.eval_seed, episodes.reference_scores,
                                       config.max_episode_steps, config.progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(out, summary)
    return summary
