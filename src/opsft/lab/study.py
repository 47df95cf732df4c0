"""`opsft lab`: the whole study in one command — does on-policy SFT beat SFT on this kind of problem?

Stages, each cached (a finished stage is skipped on a rerun) and resumable (an interrupted stage
continues: every job underneath logs its progress):

  1 data      the training problems; a validation split held out from them when learning rates are chosen
  2 score     DDT of the training data under the base model
  3 realign   Hinted Decoding rewrites of the training data, then their DDT
  4 select    per method, a grid of learning rates on the first seed, scored on the validation split
  5 train     every method, every seed, at its learning rate, with the same budget of training tokens
  6 eval      the base model and every trained model: in-domain, out-of-domain, drift from the base; the
              test sets are read here and nowhere before
  7 report    table (mean ± std over seeds), plots, HTML page (lab/report.py)

Regimes (`--regimes`): the embedded study comes in two, set apart by how close the training solutions are to
the model's own distribution (DDT): weak (phi_mean well below 0) and strong (phi_mean >= 0). Several regimes
run one lab each and a report comparing them (which loss wins where).

Under `accelerate launch` every stage uses every process: training is data-parallel on the same global batch
(--batch-size examples, split over the processes), and generation and scoring are sharded by example
(resumable.ShardedLog); the main process alone writes the lab's own files (runtime/processes.py). Without it,
--workers N runs N of the trainings and evaluations of stages 4-6 at a time, in processes of one torch thread
each.

Profiles (`--profile`): tiny (a random 2-layer model, every stage in seconds: a plumbing check for CI),
quick (the default: SmolLM2-135M with LoRA, three methods, one seed, the weak regime, about 15 minutes on a
2-core CPU), full (every method, 3 seeds, both regimes, learning rates chosen, larger sets). Any option below
replaces the profile's value.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from ..runtime.errors import OpsftError
from ..runtime.locking import LOCK_FILE
from ..runtime.options import Options, option
from ..runtime.processes import is_main_process, main_result, on_main, state
from ..runtime.workers import run_each
from .methods import METHODS, SOURCES, iterative, method_spec

STAGES = ("data", "score", "realign", "select", "train", "eval", "report")

CHAIN = "min_terms={t}&max_terms={t}&min_digits={d0}&max_digits={d1}"
LETTERS = "min_words=3&max_words=5"
# regime -> the embedded study: the training task and its solutions, the test sets, the drift prompts. Each set is
# (reasoning-gym task, query, seed): the training problems draw seed 0, the tests 1001 (in-domain), 1002 and 1004
# (out-of-domain), the drift prompts 1003. Chosen by measurement (docs/lab.md, benchmarks/probe_regimes.py):
#   weak:   three one-digit terms, solved as terse running sums: phi_mean -0.39 under SmolLM2 (far from its style),
#           base accuracy 0.09 in-domain;
#   strong: two terms of up to two digits, solved in SmolLM2's own sentence, "The answer is N.": phi_mean +0.69
#           (its prior on the solutions is strong), base accuracy 0.33, with room to learn.
REGIMES = {
    "weak": dict(train=("chain_sum", CHAIN.format(t=3, d0=1, d1=1)), rationale="running_sums",
                 in_domain={"chain_sum": ("chain_sum", CHAIN.format(t=3, d0=1, d1=1), 1001)},
                 out_of_domain={"two_terms": ("chain_sum", CHAIN.format(t=2, d0=1, d1=1), 1002),
                                "letter_counting": ("letter_counting", LETTERS, 1004)}),
    "strong": dict(train=("chain_sum", CHAIN.format(t=2, d0=1, d1=2)), rationale="answer_sentence",
                   in_domain={"two_terms_to_99": ("chain_sum", CHAIN.format(t=2, d0=1, d1=2), 1001)},
                   out_of_domain={"chain_sum": ("chain_sum", CHAIN.format(t=3, d0=1, d1=1), 1002),
                                  "letter_counting": ("letter_counting", LETTERS, 1004)}),
}
FULL_FINE_TUNING_GRID = [3e-6, 1e-5, 3e-5]  # the full profile's grid when you turn LoRA off
DATA_KEYS = ("train_data", "in_domain", "out_of_domain", "drift_data", "rationale")
_COMMON = dict(train_data=None, in_domain=None, out_of_domain=None, drift_data=None, rationale=None,
               learning_rate=None, learning_rates=None, iterate_rounds=3)
PROFILES = {
    "tiny": dict(
        _COMMON, model="tiny", regimes=["weak", "strong"], train_size=24, validation_size=6, test_size=8,
        drift_size=6, out_of_domain_sets=1, methods=list(METHODS), seeds=[0], token_budget=3000, batch_size=4,
        lora=False, learning_rate=1e-3, learning_rates={"sft": [3e-4, 1e-3], "dpo": [3e-4, 1e-3]},
        eval_max_new_tokens=12, realign_max_new_tokens=16, drift_max_new_tokens=16, prefs_k=2,
        realign_require_correct=False, realign_require_eos=False, rejection_require_correct=False),
    "quick": dict(
        _COMMON, model="smollm2-135m", regimes=["weak"], train_size=64, validation_size=0, test_size=48,
        drift_size=16, out_of_domain_sets=2, methods=["sft", "idft", "sft_realigned"], seeds=[0],
        token_budget=12000, batch_size=8, lora=True, eval_max_new_tokens=48, realign_max_new_tokens=64,
        drift_max_new_tokens=48, prefs_k=4, realign_require_correct=True, realign_require_eos=True,
        rejection_require_correct=True),
    "full": dict(
        _COMMON, model="smollm2-135m", regimes=["weak", "strong"], train_size=400, validation_size=64, test_size=200,
        drift_size=64, out_of_domain_sets=2, methods=list(METHODS), seeds=[0, 1, 2], token_budget=60000,
        batch_size=8, lora=True, learning_rates=[1e-4, 3e-4, 1e-3], eval_max_new_tokens=48,
        realign_max_new_tokens=64, drift_max_new_tokens=48, prefs_k=4, realign_require_correct=True,
        realign_require_eos=True, rejection_require_correct=True),
}


def regime_data(regime: str, settings: dict) -> dict:
    """The regime's data sources at the profile's sizes: train_data (train_size + validation_size problems; the
    validation ones are held out in stage 1), in_domain, out_of_domain, drift_data, rationale."""
    spec, size = REGIMES[regime], settings["test_size"]

    def gym(task, query, seed, n):
        return f"gym:{task}?size={n}&seed={seed}&{query}"

    return {"train_data": gym(*spec["train"], 0, settings["train_size"] + settings["validation_size"]),
            "in_domain": {name: gym(*s, size) for name, s in spec["in_domain"].items()},
            "out_of_domain": {name: gym(*s, size) for name, s in
                              list(spec["out_of_domain"].items())[:settings["out_of_domain_sets"]]},
            "drift_data": gym(*spec["train"], 1003, settings["drift_size"]), "rationale": spec["rationale"]}


@dataclass
class LabConfig(Options):
    profile: str = option("quick", "tiny (CI plumbing check), quick (default, ~20 min here) or full",
                          choices=list(PROFILES))
    out: str = option("runs/lab", "lab directory (a rerun reuses finished stages); with several regimes, one "
                                  "lab per regime in OUT/<regime> and their comparison in OUT/report",
                      output_dir=True)
    regimes: list[str] | None = option(None, "the embedded studies to run: weak (solutions far from the model's "
                                             "own style) and/or strong (close to it); see docs/lab.md",
                                       choices=list(REGIMES))
    model: str | None = option(None, "base model (default: the profile's; tiny builds a random one)")
    train_data: str | None = option(None, "training data (reference solutions), any source opsft reads")
    prompt_field: str | None = option(None, "training data: column holding the question")
    completion_field: str | None = option(None, "training data: column holding the solution")
    rationale: str | None = option(None, "gym training solutions: running_sums (chain_sum: a terse worked "
                                          "rationale), answer_sentence ('The answer is N.') or task (the bare "
                                          "answer); default: the regime's", choices=["running_sums",
                                                                                       "answer_sentence", "task"])
    in_domain: dict | None = option(None, "in-domain sets {name: data} (YAML only)", yaml_only=True)
    out_of_domain: dict | None = option(None, "out-of-domain sets (YAML only)", yaml_only=True)
    drift_data: str | dict | None = option(None, "prompts for the drift measure (in YAML also {data: ..., "
                                                 "prompt_field: ..., ...} as a suite's drift section)")
    train_size: int | None = option(None, "embedded tasks: training problems", at_least=1)
    validation_size: int | None = option(None, "training problems held out for choosing learning rates (never "
                                               "trained on; 0: none)", at_least=0)
    test_size: int | None = option(None, "embedded tasks: problems per test set", at_least=1)
    drift_size: int | None = option(None, "embedded tasks: drift prompts", at_least=1)
    methods: list[str] | None = option(None, "methods to train: " + ", ".join(METHODS) + ", or LOSS@DATA (e.g. "
                                             "eaft@rejection; DATA: raw, realigned, rejection)")
    seeds: list[int] | None = option(None, "training seeds (each method is trained once per seed)", at_least=0)
    token_budget: int | None = option(None, "training tokens per method (steps = budget / tokens per step)",
                                      at_least=1)
    batch_size: int | None = option(None, "training examples (or pairs) per step", at_least=1)
    lora: bool | None = option(None, "LoRA instead of full fine-tuning")
    learning_rate: float | None = option(None, "learning rate for every method (default: each method's own)",
                                         above=0)
    learning_rates: list[float] | dict | None = option(
        None, "a grid of learning rates: each method is trained at each on the first seed, and every seed then "
              "at the one with the best accuracy on the validation split (in YAML also {method or loss: [rates], "
              "default: [rates]})")
    eval_max_new_tokens: int | None = option(None, "length cap of an evaluated answer", at_least=1)
    realign_max_new_tokens: int | None = option(None, "length cap of a rewrite", at_least=1)
    drift_max_new_tokens: int | None = option(None, "length cap of a base sample for the drift measure", at_least=1)
    prefs_k: int | None = option(None, "samples per prompt for DPO/SimPO pairs, and for rejection data", at_least=1)
    iterate_rounds: int | None = option(None, "rounds of the iterative methods (LOSS_iterative@SOURCE), which share "
                                              "the method's token budget equally", at_least=1)
    realign_require_correct: bool | None = option(None, "keep only rewrites with the right answer")
    realign_require_eos: bool | None = option(None, "keep only rewrites that ended on their own")
    rejection_require_correct: bool | None = option(None, "rejection data: keep only answers the scorer marks "
                                                          "correct (off only in the tiny plumbing profile)")
    workers: int = option(1, "trainings and evaluations run at once in stages 4-6, each in its own process with one "
                             "torch thread (on a CPU: as many as cores); 1: one at a time, on every thread",
                          at_least=1)
    overwrite: bool = option(False, "discard an earlier lab in --out")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        from ..methods.losses import METHODS as FAMILY

        for method in self.methods or []:
            method_spec(method)
        settings = self.resolved()
        grid = settings["learning_rates"]
        grids = list(grid.values()) if isinstance(grid, dict) else [grid] if grid is not None else []
        own_data = [f"--{k.replace('_', '-')}" for k in DATA_KEYS[:4] if getattr(self, k) is not None]
        return [(self.seeds is None or len(self.seeds) > 0, "--seeds: give at least one seed"),
                (self.methods is None or len(self.methods) > 0, "--methods: give at least one method"),
                ((self.prompt_field is None) == (self.completion_field is None),
                 "--prompt-field and --completion-field go together: give both or neither"),
                (self.regimes is None or len(self.regimes) > 0, "--regimes: give at least one"),
                (len(self.regime_names()) == 1 or not own_data,
                 f"{', '.join(own_data)} replace the embedded study's data: give one regime (--regimes weak)"),
                (not isinstance(grid, dict) or set(grid) <= {"default", *settings["methods"], *FAMILY, "dpo", "simpo"},
                 f"--learning-rates: keys are methods of this lab, losses or 'default' (got {sorted(grid or {})})"),
                (all(isinstance(g, list) and g and all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                                       and r > 0 for r in g) for g in grids),
                 f"--learning-rates: each grid is a list of positive numbers (got {grid})"),
                (settings["validation_size"] > 0 or all(len(g) < 2 for g in grids),
                 "--learning-rates: choosing among several needs a validation split (--validation-size > 0)")]

    def regime_names(self) -> list[str]:
        """The regimes to run: as given, else the profile's (only its first when you bring your own data: the
        regime then supplies only what you leave out)."""
        if self.regimes:
            return list(self.regimes)
        own_data = any(getattr(self, k) is not None for k in DATA_KEYS[:4])
        return PROFILES[self.profile]["regimes"][:1 if own_data else None]

    def resolved(self, regime: str | None = None) -> dict:
        """The profile's settings for one regime (default: the first), every option given here put over them."""
        settings = dict(PROFILES[self.profile])
        settings.update({k: v for k, v in asdict(self).items() if v is not None and k in settings})
        regime = regime or self.regime_names()[0]
        for key, value in regime_data(regime, settings).items():
            if settings[key] is None:
                settings[key] = value
        if PROFILES[self.profile]["lora"] and not settings["lora"] and settings["learning_rates"] == \
                PROFILES[self.profile]["learning_rates"] and self.learning_rates is None:
            settings["learning_rates"] = FULL_FINE_TUNING_GRID  # the profile's grid is for LoRA
        settings.pop("regimes")
        return {**settings, "regime": regime, "prompt_field": self.prompt_field,
                "completion_field": self.completion_field, "profile": self.profile}


class Lab:
    """One study: one regime's training data, test sets and every method (stages above), in `out`."""

    def __init__(self, config: LabConfig, regime: str | None = None, out: Path | None = None, clear: bool = True):
        from ..commands.eval import suite_sets

        self.config, self.settings = config, config.resolved(regime)
        self.regime, self.out = self.settings["regime"], Path(out or config.out)
        # the test sets and drift prompts are checked now (that they exist), not after the first stages have run
        suite_sets(eval_suite(self.settings, self.settings["model"]), self.out / "data" / "suite.yaml",
                   label="the lab's test sets")
        on_main(lambda: self.settle(config.overwrite and clear))
        self.model = self.settings["model"]
        processes = state().num_processes
        if processes > 1 and config.workers > 1:
            raise OpsftError(f"--workers {config.workers} runs jobs in processes of its own: not under accelerate "
                             f"launch, whose {processes} processes already share every job (give --workers 1)")
        if self.settings["batch_size"] % processes:
            raise OpsftError(f"--batch-size {self.settings['batch_size']} does not split over {processes} processes: "
                             f"give a multiple of {processes} (the global batch is the same whatever the count)")

    def settle(self, clear: bool) -> None:
        """(main process) The lab directory, checked against these settings and recorded."""
        if clear:
            clear_lab(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "lab_config.json"
        if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(self.settings)):
            raise OpsftError(f"{self.out} holds a lab with other settings; use another --out or --overwrite")
        saved.write_text(json.dumps(self.settings, indent=2) + "\n")

    # ---- bookkeeping ------------------------------------------------------------------------------

    def stage(self, number: int, name: str, work, *, main_only: bool = False) -> dict:
        """Run a stage once: its result is kept in stages/<number>-<name>.json and reused. Every process runs
        `work` (the main one alone with `main_only`) and gets the main process's result."""
        marker, where = self.out / "stages" / f"{number}-{name}.json", f"[lab {self.regime}]"
        if on_main(marker.exists):
            self.say(f"{where} stage {number}/7 {name}: done earlier, reused")
            return json.loads(marker.read_text())
        self.say(f"{where} stage {number}/7 {name} ...")
        started = time.perf_counter()
        result = main_result((work() if is_main_process() or not main_only else None) or {})
        result["seconds"] = round(time.perf_counter() - started, 1)

        def write():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(result, indent=2, default=str) + "\n")

        on_main(write)
        self.say(f"{where} stage {number}/7 {name}: finished in {result['seconds']:.0f} s")
        return json.loads(json.dumps(result, default=str))  # as a rerun reads it back

    @staticmethod
    def say(text: str) -> None:
        if is_main_process():
            print(text, flush=True)

    def common(self) -> dict:
        return {"progress": self.config.progress}

    # ---- stages ------------------------------------------------------------------------------------

    def build_data(self) -> dict:
        """The training problems (data/train.jsonl, or the user's file as it is) and, when learning rates are
        chosen, the validation split held out from them (data/validation.jsonl, never trained on)."""
        s = self.settings
        data_dir = self.out / "data"
        data_dir.mkdir(exist_ok=True)
        if s["model"] == "tiny":
            from ..inputs.tiny import build_tiny_model

            texts = [r["question"] + " " + r["solution"] for r in _gym_rows(s["train_data"], s["rationale"])]
            self.model = str(build_tiny_model(data_dir / "tiny-model", texts * 4))
        train, validation = data_dir / "train.jsonl", data_dir / "validation.jsonl"
        if s["train_data"].startswith("gym:"):
            rows, fields = _gym_rows(s["train_data"], s["rationale"]), ("question", "solution")
        elif s["validation_size"]:
            from ..inputs.data import load_examples

            fields = (s["prompt_field"], s["completion_field"])
            rows = [e.row for e in load_examples(s["train_data"], prompt_field=fields[0],
                                                 completion_field=fields[1]).examples]
        else:
            return {"model": self.model, "train": s["train_data"], "prompt_field": s["prompt_field"],
                    "completion_field": s["completion_field"], "suite": str(data_dir / "suite.yaml")}
        held_out = validation_split(len(rows), s["validation_size"], s["train_data"])
        _write_jsonl(train, [r for i, r in enumerate(rows) if i not in held_out])
        result = {"model": self.model, "train": str(train), "prompt_field": fields[0], "completion_field": fields[1],
                  "suite": str(data_dir / "suite.yaml")}
        if held_out:
            _write_jsonl(validation, [rows[i] for i in sorted(held_out)])
            result.update(validation=str(validation), validation_problems=len(held_out))
        return result

    def evaluation(self, model: str, out: Path):
        """The EvalConfig of the final evaluation of `model` into `out` (test sets and drift)."""
        from ..commands.eval import EvalConfig

        s, base_drift = self.settings, self.out / "eval" / "base" / "drift"

        def copy_base_samples():  # the base's samples are the same for every model: its logs (one per process)
            if out != base_drift.parent and not (out / "drift").exists():
                for log in base_drift.glob("base_samples*.jsonl"):
                    (out / "drift").mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, out / "drift" / log.name)

        on_main(copy_base_samples)
        return EvalConfig(model=model, suite=self.data["suite"], out=str(out), max_new_tokens=s["eval_max_new_tokens"],
                          drift_limit=None, drift_max_new_tokens=s["drift_max_new_tokens"], **self.common())

    def validation(self, model: str, out: Path):
        """The EvalConfig of `model`'s accuracy on the validation split (training problems held out in stage 1),
        greedy, as the tests are."""
        from ..commands.eval import EvalConfig

        d = self.data
        answer = {"answer_field": "answer"} if self.settings["train_data"].startswith("gym:") else {}
        suite = self.out / "data" / "validation_suite.yaml"  # one for every trial, outside the runs' directories

        def write_suite():
            suite.parent.mkdir(parents=True, exist_ok=True)
            suite.write_text(yaml.safe_dump({"in_domain": {"validation": {
                "data": d["validation"], "prompt_field": d["prompt_field"], "completion_field": d["completion_field"],
                **answer}}}))

        on_main(write_suite)
        return EvalConfig(model=model, suite=str(suite), out=str(out), drift_limit=None,
                          max_new_tokens=self.settings["eval_max_new_tokens"], **self.common())

    def score(self, data: str, out: str, fields: tuple[str | None, str | None]) -> dict:
        from ..commands.score import ScoreConfig, run_score

        return main_result(run_score(ScoreConfig(model=self.model, data=data, out=out, prompt_field=fields[0],
                                                 completion_field=fields[1], **self.common())))

    def realign(self) -> dict:
        from ..commands.realign import RealignConfig, run_realign

        s, d = self.settings, self.data
        summary = main_result(run_realign(RealignConfig(
            model=self.model, data=d["train"], prompt_field=d["prompt_field"], completion_field=d["completion_field"],
            out=str(self.out / "realign"), max_new_tokens=s["realign_max_new_tokens"],
            require_correct=s["realign_require_correct"], require_eos=s["realign_require_eos"], **self.common())))
        result = {"kept": summary["kept"], "decoded": summary["decoded"], "dropped": summary["dropped"]}
        if summary["kept"]:
            result["score"] = self.score(str(self.out / "realign" / "realigned.jsonl"),
                                         str(self.out / "score" / "realigned"), (None, None))["phi_mean"]
        return result

    def prefs(self) -> dict:
        from ..commands.prefs import PrefsConfig, run_prefs

        s, d = self.settings, self.data
        return main_result(run_prefs(PrefsConfig(
            model=self.model, data=d["train"], prompt_field=d["prompt_field"], completion_field=d["completion_field"],
            out=str(self.out / "prefs"), k=s["prefs_k"], max_new_tokens=s["eval_max_new_tokens"], **self.common())))

    def rejection(self) -> dict:
        """The model's own correct answers to the training problems (never the test sets), and their DDT."""
        from ..commands.rejection import RejectionConfig, run_rejection

        s, d = self.settings, self.data
        summary = main_result(run_rejection(RejectionConfig(
            model=self.model, data=d["train"], prompt_field=d["prompt_field"], completion_field=d["completion_field"],
            out=str(self.out / "rejection"), k=s["prefs_k"], max_new_tokens=s["eval_max_new_tokens"],
            require_correct=s["rejection_require_correct"], **self.common())))
        if summary["kept"]:
            self.score(str(self.out / "rejection" / "rejection.jsonl"), str(self.out / "score" / "rejection"),
                       (None, None))
        return summary

    @functools.cached_property
    def training_sets(self) -> dict:
        """method data kind -> (data path, fields, tokens per example, examples) for the budget; built once (stages
        4 and 5 both train)."""
        d, sets = self.data, {}
        kinds = {method_spec(m)[1] for m in self.settings["methods"]}
        if "raw" in kinds:
            sets["raw"] = (d["train"], (d["prompt_field"], d["completion_field"]))
        if "realigned" in kinds and self.realigned.get("kept"):
            sets["realigned"] = (str(self.out / "realign" / "realigned.jsonl"), (None, None))
        if "rejection" in kinds:
            if not on_main((self.out / "rejection" / "summary.json").exists):
                self.rejection()
            if json.loads((self.out / "rejection" / "summary.json").read_text())["kept"]:
                sets["rejection"] = (str(self.out / "rejection" / "rejection.jsonl"), (None, None))
        if any(iterative(kind) for kind in kinds):  # each round makes its own data from the training problems
            for kind in filter(iterative, kinds):
                sets[kind] = (d["train"], (d["prompt_field"], d["completion_field"]))
        if "prefs" in kinds:
            if not on_main((self.out / "prefs" / "summary.json").exists):
                self.prefs()
            if json.loads((self.out / "prefs" / "summary.json").read_text())["pairs"]:
                sets["prefs"] = (str(self.out / "prefs" / "prefs.jsonl"), (None, None))
        from transformers import AutoTokenizer

        from ..inputs.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model))
        return {kind: (path, fields, *((None, None) if iterative(kind) else _tokens_per_example(path, fields, kind,
                                                                                                   tokenizer)))
                for kind, (path, fields) in sets.items()}

    def learning_rates(self, method: str) -> list[float | None]:
        """The grid this method is trained on (one value: no choice to make; None: the method's default)."""
        grid = self.settings["learning_rates"]
        if isinstance(grid, dict):
            grid = grid.get(method, grid.get(method_spec(method)[0], grid.get("default")))
        return list(grid) if grid else [self.settings["learning_rate"]]

    def training(self, method: str, seed: int, learning_rate: float | None, sets: dict, name: str) -> tuple:
        """`method` at `learning_rate` with the lab's token budget into runs/<name>: the run's record, and the job
        steps that train it (resumed if cut off; none when the run finished earlier)."""
        from ..engine.train_config import TrainConfig, budget_steps, tokens_per_step

        s, (loss, kind) = self.settings, method_spec(method)
        path, fields, tokens, examples = sets[kind]
        if iterative(kind):
            return self.iterative_training(method, seed, learning_rate, path, fields, name)
        steps = budget_steps(s["token_budget"], examples, s["batch_size"], tokens)
        sdft = loss == "sdft"  # its samples' lengths are known once made: the step plan uses the references'
        out, steps_to_run = self.out / "runs" / name, []
        if not on_main(lambda: (out / "train_summary.json").exists() and (out / "final").exists()):
            steps_to_run.append(("say", f"[lab {self.regime}] training {name}: {steps} steps of "
                                        f"{min(examples, s['batch_size'])} x ~{tokens:.0f} tokens"
                                        + (f", learning rate {learning_rate:g}" if learning_rate else "")))
            # the global batch split over the processes of `accelerate launch`
            steps_to_run.append(("train", TrainConfig(
                model=self.model, data=path, prompt_field=fields[0], completion_field=fields[1], loss=loss,
                output_dir=str(out), max_steps=steps,
                per_device_train_batch_size=s["batch_size"] // state().num_processes,
                lora=s["lora"], learning_rate=learning_rate, seed=seed, logging_steps=1,
                save_steps=max(1, steps // 4), save_total_limit=1, resume=True,
                **({"sdft_max_new_tokens": s["eval_max_new_tokens"]} if sdft else {}), **self.common())))
        return {"method": method, "seed": seed, "dir": f"runs/{name}", "learning_rate": learning_rate,
                "steps": steps, "tokens_per_example": tokens, "examples": examples,
                # sdft: the tokens counted in training (report.py)
                "train_tokens": None if sdft else round(steps * tokens_per_step(examples, s["batch_size"], tokens))
                }, steps_to_run

    def counterpart(self, method: str) -> str | None:
        """The single-round method of this lab an iterative one takes its learning rate from: the same loss on the
        same source's data made once (LOSS_iterative@rejection: the method of LOSS on rejection data; @realign: on
        realigned data), if the lab trains it; else None (the iterative method's own grid is then searched)."""
        loss, kind = method_spec(method)
        source = (iterative(kind) or (None,))[0]
        data = {"rejection": "rejection", "realign": "realigned"}.get(source)
        return next((m for m in self.settings["methods"] if data and method_spec(m) == (loss, data)), None)

    def iterative_training(self, method: str, seed: int, learning_rate: float | None, path: str, fields,
                           name: str) -> tuple:
        """An iterative method: `opsft iterate` from the base model over iterate_rounds rounds, sharing the lab's
        token budget equally, into runs/<name> (its final model: runs/<name>/final). Its record's train_tokens are
        those the rounds trained (read back by the report), and it samples as the rejection and realign stages do."""
        from ..commands.iterate import IterateConfig

        s, (loss, kind) = self.settings, method_spec(method)
        source, fallback = iterative(kind)
        out, steps_to_run = self.out / "runs" / name, []
        if not on_main(lambda: (out / "iterate_summary.json").exists()):
            steps_to_run.append(("say", f"[lab {self.regime}] training {name}: {s['iterate_rounds']} rounds of "
                                        f"{source} data, {s['token_budget']} tokens in all"
                                        + (f", learning rate {learning_rate:g}" if learning_rate else "")))
            steps_to_run.append(("iterate", IterateConfig(
                model=self.model, data=path, prompt_field=fields[0], completion_field=fields[1], loss=loss,
                output_dir=str(out), source=source, fallback=fallback, rounds=s["iterate_rounds"],
                token_budget=s["token_budget"], k=s["prefs_k"],
                max_new_tokens=s["realign_max_new_tokens"] if "realign" in source else s["eval_max_new_tokens"],
                per_device_train_batch_size=s["batch_size"] // state().num_processes, lora=s["lora"],
                learning_rate=learning_rate, seed=seed, logging_steps=1, save_steps=10 ** 6, **self.common())))
        return {"method": method, "seed": seed, "dir": f"runs/{name}", "learning_rate": learning_rate,
                "rounds": s["iterate_rounds"], "source": source, "fallback": fallback}, steps_to_run

    def run_jobs(self, jobs: list[list[tuple]]) -> list:
        """Each job (its steps, run in order: ("say", line), ("train", TrainConfig), ("eval", EvalConfig)), one
        after the other, or with --workers N, N jobs at a time in spawned processes of one torch thread each. A
        job's result is its last step's."""
        if self.config.workers > 1 and len(jobs) > 1:  # no progress bars: several would write over each other
            jobs = [[(kind, config if kind == "say" else replace(config, progress=False)) for kind, config in job]
                    for job in jobs]
        return list(run_each(_run_steps, jobs, self.config.workers))

    def select(self) -> dict:
        """Each method with several learning rates: trained at each on the first seed, scored on the validation
        split (training problems never trained on; the test sets are not read), the best kept (ties: the
        smaller rate, the smaller step)."""
        s, sets, seed = self.settings, self.training_sets, self.settings["seeds"][0]
        trials, jobs = [], []
        for method in s["methods"]:
            grid = self.learning_rates(method)
            if len(grid) < 2 or method_spec(method)[1] not in sets or self.counterpart(method):
                continue
            for rate in grid:
                run, train = self.training(method, seed, rate, sets, f"{method}-seed{seed}-lr{rate:g}")
                validate = self.validation(str(self.out / run["dir"] / "final"), self.out / run["dir"] / "validation")
                trials.append(run)
                jobs.append([*train, ("eval", validate)])
        chosen = {}
        for run, summary in zip(trials, self.run_jobs(jobs)):
            trial = ({**run, "skipped": summary["empty_round"]} if "empty_round" in summary
                     else {**run, "validation_accuracy": summary["in_domain_accuracy"]})
            chosen.setdefault(run["method"], {"trials": []})["trials"].append(trial)
        for choice in chosen.values():
            ran = [t for t in choice["trials"] if "skipped" not in t]
            if not ran:  # every rate had a round with nothing to train on: the method's runs are skipped
                choice.update(skipped=choice["trials"][0]["skipped"])
                continue
            best = max(ran, key=lambda t: (t["validation_accuracy"], -t["learning_rate"]))
            choice.update(learning_rate=best["learning_rate"], run=best)
        return {"validation_problems": self.data.get("validation_problems", 0), "methods": chosen}

    def train_all(self) -> dict:
        """Every method, every seed, at its chosen learning rate (the first seed's run is the selection's own)."""
        s, sets, runs, jobs, names = self.settings, self.training_sets, {}, [], []
        for method in s["methods"]:
            selection = self.selected["methods"].get(method)
            rate = selection.get("learning_rate") if selection else self.learning_rates(method)[0]
            counterpart = self.selected["methods"].get(self.counterpart(method))
            if counterpart and "skipped" not in counterpart:  # an iterative method: its counterpart's chosen rate
                rate = counterpart["learning_rate"]
            for seed in s["seeds"]:
                name, kind = f"{method}-seed{seed}", method_spec(method)[1]
                if kind not in sets:
                    runs[name] = {"skipped": f"no {kind} training data: {SOURCES[kind]} gave none"}
                elif selection and "skipped" in selection:
                    runs[name] = {"skipped": selection["skipped"]}
                elif selection and seed == selection["run"]["seed"]:
                    runs[name] = {k: v for k, v in selection["run"].items() if k != "validation_accuracy"}
                else:
                    runs[name], train = self.training(method, seed, rate, sets, name)
                    if train:
                        jobs.append(train)
                        names.append(name)
        for name, result in zip(names, self.run_jobs(jobs)):
            if isinstance(result, dict) and "empty_round" in result:  # an iterative run with an empty round
                runs[name] = {"skipped": result["empty_round"]}
        return {"runs": runs}

    def evaluate_all(self, runs: dict) -> dict:
        """The final evaluations, the only place the test sets are read: the base model, then every run."""
        base = _accuracies(self.run_jobs([[("eval", self.evaluation(self.model, self.out / "eval" / "base"))]])[0])
        trained = {name: r for name, r in runs.items() if "skipped" not in r}  # the base's drift samples first
        summaries = self.run_jobs([[("eval", self.evaluation(str(self.out / r["dir"] / "final"),
                                                             self.out / r["dir"] / "eval"))] for r in trained.values()])
        return {"base": base, "runs": {name: _accuracies(summary) for name, summary in zip(trained, summaries)}}

    def run(self) -> dict:
        self.data = self.stage(1, "data", self.build_data, main_only=True)
        self.model = self.data["model"]
        # written on every run, so that a lab cached by an older opsft evaluates with today's suite (drift included)
        on_main(lambda: Path(self.data["suite"]).write_text(yaml.safe_dump(eval_suite(self.settings, self.model),
                                                                           sort_keys=False)))
        d = self.data
        self.stage(2, "score", lambda: {"phi_mean": self.score(d["train"], str(self.out / "score" / "raw"),
                                                               (d["prompt_field"], d["completion_field"]))["phi_mean"]})
        needs_realign = any(method_spec(m)[1] == "realigned" for m in self.settings["methods"])
        self.realigned = self.stage(3, "realign", self.realign if needs_realign else lambda: {"skipped": "no method "
                                                                                              "uses it"})
        self.selected = self.stage(4, "select", self.select)
        self.runs = self.stage(5, "train", self.train_all)["runs"]
        self.stage(6, "eval", lambda: self.evaluate_all(self.runs))
        from .report import write_report

        report = self.stage(7, "report", lambda: write_report(self.out, self.settings, self.runs, self.selected),
                            main_only=True)
        self.say("\n" + (self.out / "report" / "results.md").read_text())
        self.say(f"[lab {self.regime}] report: {self.out / 'report' / 'index.html'}")
        return report


def run_lab(config: LabConfig) -> dict:
    """One lab, or with several regimes one per regime in OUT/<regime> and their comparison in OUT/report."""
    regimes = config.regime_names()
    if len(regimes) == 1:
        return Lab(config, regimes[0]).run()
    out = Path(config.out)
    if config.overwrite:
        on_main(lambda: clear_lab(out))
    labs = [Lab(config, regime, out / regime, clear=False) for regime in regimes]  # every regime checked first
    for lab in labs:
        lab.run()
    from .report import write_regimes_report

    summary = on_main(lambda: write_regimes_report(out, [(lab.regime, lab.out, lab.settings, lab.runs)
                                                         for lab in labs]))
    Lab.say("\n" + (out / "report" / "regimes.md").read_text())
    Lab.say(f"[lab] regimes compared: {out / 'report' / 'index.html'}")
    return summary


def _run_steps(steps: list[tuple]) -> dict | None:
    """One job of Lab.run_jobs: its training and evaluation steps in order; the last one's result, or
    {"empty_round": reason} where an iterative run had a round with nothing to train on (later steps not run)."""
    result = None
    for kind, config in steps:
        if kind == "say":
            Lab.say(config)
        elif kind == "train":
            from ..commands.train import run_train

            result = run_train(config)
        elif kind == "iterate":
            from ..commands.iterate import EmptyRound, run_iterate

            try:
                result = main_result(run_iterate(config))
            except EmptyRound as error:  # recorded as the run's reason to be skipped; the lab goes on
                return {"empty_round": f"{Path(config.output_dir).name}: {error}"}
        else:
            from ..commands.eval import run_eval

            result = main_result(run_eval(config))
    return result


def clear_lab(out: Path) -> None:
    """Remove an earlier lab in `out`, all but the lock this run holds (runtime/locking.py)."""
    if out.exists():
        for path in out.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def validation_split(n: int, size: int, source: str) -> set[int]:
    """Indices of the `size` rows held out for validation: a fixed random draw (seed 0), so that rows written in
    order (by difficulty, by topic) do not put one kind only in the validation split."""
    import random

    if size and size >= n:
        raise OpsftError(f"--validation-size {size}: the training data {source} has {n} rows; hold out fewer")
    return set(random.Random(0).sample(range(n), size)) if size else set()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))


def eval_suite(settings: dict, base_model: str) -> dict:
    """The `opsft eval` suite of a lab: its test sets, and the drift prompts (a data source, or a mapping with
    its fields) on which the base model's samples are scored under each trained model."""
    suite = {"in_domain": settings["in_domain"], "out_of_domain": settings["out_of_domain"]}
    if settings["drift_data"]:
        drift = settings["drift_data"]
        suite["drift"] = {**(drift if isinstance(drift, dict) else {"data": drift}), "base": base_model}
    return suite


def _accuracies(summary: dict) -> dict:
    return {"in_domain": summary["in_domain_accuracy"], "out_of_domain": summary["out_of_domain_accuracy"],
            "drift": (summary.get("drift") or {}).get("drift")}


def _gym_rows(spec: str, rationale: str) -> list[dict]:
    """A gym task's rows as question/solution/answer; the solutions as the task gives them (rationale 'task'),
    as terse running sums (chain_sum), or as the sentence SmolLM2 itself answers with, 'The answer is N.'."""
    from ..inputs.data import load_examples

    rows = []
    for e in load_examples(spec).examples:
        row = {"question": e.row["question"], "solution": e.row["solution"], "answer": e.row["answer"]}
        expression = e.row.get("metadata", {}).get("expression")
        if rationale == "running_sums" and expression:
            row["solution"] = running_sums(expression)
        elif rationale == "answer_sentence":
            row["solution"] = f"The answer is {e.row['answer']}."
        rows.append(row)
    return rows


def running_sums(expression: str) -> str:
    """'42 - 25 - 73' -> '42 - 25 = 17\\n17 - 73 = -56\\n#### -56': a terse worked solution, one line a step."""
    tokens = re.findall(r"-?\d+|[+-]", expression)
    total, lines, i = int(tokens[0]), [], 1
    while i < len(tokens):
        op, value = tokens[i], int(tokens[i + 1])
        new = total + value if op == "+" else total - value
        lines.append(f"{total} {op} {value} = {new}")
        total, i = new, i + 2
    return "\n".join(lines + [f"#### {total}"])


def _tokens_per_example(path: str, fields, kind: str, tokenizer) -> tuple[float, int]:
    """Mean training tokens per example (prompt + completion) or per pair (prompt + chosen, prompt + rejected),
    tokenized as training renders them (chat template, EOS), and the number of examples (pairs)."""
    from ..inputs.data import load_examples, load_preferences
    from ..inputs.rendering import tokenize_dataset

    if kind == "prefs":
        from ..engine.preference_training import fit_pairs

        pairs, mean, _ = fit_pairs(load_preferences(path)[0], tokenizer, max_length=10 ** 9, source=path)
        return mean, len(pairs)
    examples = load_examples(path, prompt_field=fields[0], completion_field=fields[1]).examples
    tokenized, _ = tokenize_dataset(examples, tokenizer, max_length=10 ** 9)
    return (sum(len(t.input_ids) for t in tokenized) / len(tokenized) if tokenized else math.nan), len(tokenized)
