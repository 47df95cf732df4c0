"""`opsft lab`: the whole study in one command — does on-policy SFT beat SFT on this kind of problem?

Stages, each cached (a finished stage is skipped on a rerun) and resumable (an interrupted stage
continues: every job underneath logs its progress):

  1 data      train set, in-domain and out-of-domain test sets (other seeds), drift prompts
  2 base      evaluate the base model (in-domain, out-of-domain; drift of the base against itself = 0)
  3 score     DDT of the training data under the base model
  4 realign   Hinted Decoding rewrites of the training data, then their DDT
  5 train     every method, every seed, with the same budget of training tokens
  6 eval      every trained model: in-domain, out-of-domain, drift from the base
  7 report    table (mean ± std over seeds), plots, HTML page (lab_report.py)

Profiles (`--profile`): tiny (a random 2-layer model, every stage in seconds: a plumbing check for CI),
quick (the default: SmolLM2-135M with LoRA, a few methods, one seed, about 20 minutes on a 2-core CPU),
full (every method, 3 seeds, larger sets). Any option below replaces the profile's value.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .errors import OpsftError
from .locking import LOCK_FILE
from .options import Options, option

METHODS = {  # method -> (loss, training data); any other loss@data pair works too (method_spec)
    "sft": ("sft", "raw"), "dft": ("dft", "raw"), "idft": ("idft", "raw"), "iwsft": ("iwsft", "raw"),
    "eaft": ("eaft", "raw"), "asft": ("asft", "raw"), "idft_legacy": ("idft_legacy", "raw"),
    "sft_realigned": ("sft", "realigned"), "idft_realigned": ("idft", "realigned"),
    "sft_rejection": ("sft", "rejection"), "idft_rejection": ("idft", "rejection"),
    "dpo": ("dpo", "prefs"), "simpo": ("simpo", "prefs"),
}
SOURCES = {  # training data -> where it comes from
    "raw": "the reference solutions", "realigned": "their Hinted Decoding rewrites (stage 4)",
    "rejection": "the model's own correct answers (opsft rejection)", "prefs": "preference pairs (opsft prefs)",
}


def method_spec(name: str) -> tuple[str, str]:
    """(loss, training data) of a lab method: a name in METHODS, or LOSS@DATA, e.g. eaft@rejection, with DATA one of
    raw, realigned, rejection (the SFT family) or prefs (dpo, simpo)."""
    from .losses import METHODS as FAMILY

    if name in METHODS:
        return METHODS[name]
    loss, _, source = name.partition("@")
    if (loss in FAMILY and source in ("raw", "realigned", "rejection")) or (loss in ("dpo", "simpo")
                                                                             and source == "prefs"):
        return loss, source
    raise OpsftError(f"unknown lab method {name!r}: use one of {', '.join(METHODS)}, or LOSS@DATA with a loss of "
                     f"{', '.join(FAMILY)} and DATA raw, realigned or rejection (dpo@prefs, simpo@prefs)")
STAGES = ("data", "base", "score", "realign", "train", "eval", "report")

CHAIN = "min_terms={t}&max_terms={t}&min_digits=1&max_digits=1"
LETTERS = "min_words=3&max_words=5"
PROFILES = {
    "tiny": dict(
        model="tiny", train_data=f"gym:chain_sum?size=24&seed=0&{CHAIN.format(t=3)}",
        in_domain={"chain_sum": f"gym:chain_sum?size=8&seed=1001&{CHAIN.format(t=3)}"},
        out_of_domain={"two_terms": f"gym:chain_sum?size=8&seed=1002&{CHAIN.format(t=2)}"},
        drift_data=f"gym:chain_sum?size=6&seed=1003&{CHAIN.format(t=3)}",
        methods=list(METHODS), seeds=[0], token_budget=3000, batch_size=4, lora=False, learning_rate=1e-3,
        eval_max_new_tokens=12, realign_max_new_tokens=16, drift_max_new_tokens=16, prefs_k=2,
        realign_require_correct=False, realign_require_eos=False, rejection_require_correct=False,
        rationale="running_sums"),
    "quick": dict(
        model="smollm2-135m", train_data=f"gym:chain_sum?size=64&seed=0&{CHAIN.format(t=3)}",
        in_domain={"chain_sum": f"gym:chain_sum?size=48&seed=1001&{CHAIN.format(t=3)}"},
        out_of_domain={"two_terms": f"gym:chain_sum?size=48&seed=1002&{CHAIN.format(t=2)}",
                       "letter_counting": f"gym:letter_counting?size=48&seed=1004&{LETTERS}"},
        drift_data=f"gym:chain_sum?size=16&seed=1003&{CHAIN.format(t=3)}",
        methods=["sft", "idft", "sft_realigned"], seeds=[0], token_budget=12000, batch_size=8, lora=True,
        learning_rate=None, eval_max_new_tokens=48, realign_max_new_tokens=64, drift_max_new_tokens=48, prefs_k=4,
        realign_require_correct=True, realign_require_eos=True, rejection_require_correct=True,
        rationale="running_sums"),
    "full": dict(
        model="smollm2-135m", train_data=f"gym:chain_sum?size=400&seed=0&{CHAIN.format(t=3)}",
        in_domain={"chain_sum": f"gym:chain_sum?size=200&seed=1001&{CHAIN.format(t=3)}"},
        out_of_domain={"two_terms": f"gym:chain_sum?size=200&seed=1002&{CHAIN.format(t=2)}",
                       "letter_counting": f"gym:letter_counting?size=200&seed=1004&{LETTERS}"},
        drift_data=f"gym:chain_sum?size=64&seed=1003&{CHAIN.format(t=3)}",
        methods=list(METHODS), seeds=[0, 1, 2], token_budget=60000, batch_size=8, lora=True,
        learning_rate=None, eval_max_new_tokens=48, realign_max_new_tokens=64, drift_max_new_tokens=48, prefs_k=4,
        realign_require_correct=True, realign_require_eos=True, rejection_require_correct=True,
        rationale="running_sums"),
}


@dataclass
class LabConfig(Options):
    profile: str = option("quick", "tiny (CI plumbing check), quick (default, ~20 min here) or full",
                          choices=list(PROFILES))
    out: str = option("runs/lab", "lab directory (a rerun reuses finished stages)", output_dir=True)
    model: str | None = option(None, "base model (default: the profile's; tiny builds a random one)")
    train_data: str | None = option(None, "training data (reference solutions), any source opsft reads")
    prompt_field: str | None = option(None, "training data: column holding the question")
    completion_field: str | None = option(None, "training data: column holding the solution")
    rationale: str | None = option(None, "gym chain_sum training solutions: running_sums (a terse worked "
                                          "rationale, not the model's style) or task (the bare answer)",
                                   choices=["running_sums", "task"])
    in_domain: dict | None = option(None, "in-domain sets {name: data} (YAML only)", yaml_only=True)
    out_of_domain: dict | None = option(None, "out-of-domain sets (YAML only)", yaml_only=True)
    drift_data: str | dict | None = option(None, "prompts for the drift measure (in YAML also {data: ..., "
                                                 "prompt_field: ..., ...} as a suite's drift section)")
    methods: list[str] | None = option(None, "methods to train: " + ", ".join(METHODS) + ", or LOSS@DATA (e.g. "
                                             "eaft@rejection; DATA: raw, realigned, rejection)")
    seeds: list[int] | None = option(None, "training seeds (each method is trained once per seed)", at_least=0)
    token_budget: int | None = option(None, "training tokens per method (steps = budget / tokens per step)",
                                      at_least=1)
    batch_size: int | None = option(None, "training examples (or pairs) per step", at_least=1)
    lora: bool | None = option(None, "LoRA instead of full fine-tuning")
    learning_rate: float | None = option(None, "learning rate for every method (default: each method's own)",
                                         above=0)
    eval_max_new_tokens: int | None = option(None, "length cap of an evaluated answer", at_least=1)
    realign_max_new_tokens: int | None = option(None, "length cap of a rewrite", at_least=1)
    drift_max_new_tokens: int | None = option(None, "length cap of a base sample for the drift measure", at_least=1)
    prefs_k: int | None = option(None, "samples per prompt for DPO/SimPO pairs", at_least=1)
    realign_require_correct: bool | None = option(None, "keep only rewrites with the right answer")
    realign_require_eos: bool | None = option(None, "keep only rewrites that ended on their own")
    rejection_require_correct: bool | None = option(None, "rejection data: keep only answers the scorer marks "
                                                          "correct (off only in the tiny plumbing profile)")
    overwrite: bool = option(False, "discard an earlier lab in --out")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        for method in self.methods or []:
            method_spec(method)
        return [(self.seeds is None or len(self.seeds) > 0, "--seeds: give at least one seed"),
                (self.methods is None or len(self.methods) > 0, "--methods: give at least one method"),
                ((self.prompt_field is None) == (self.completion_field is None),
                 "--prompt-field and --completion-field go together: give both or neither")]

    def resolved(self) -> dict:
        """The profile's settings with every option given here put over them."""
        settings = dict(PROFILES[self.profile])
        settings.update({k: v for k, v in asdict(self).items() if v is not None and k in settings})
        return {**settings, "prompt_field": self.prompt_field, "completion_field": self.completion_field,
                "profile": self.profile}


class Lab:
    def __init__(self, config: LabConfig):
        from .eval_run import suite_sets

        self.config, self.settings = config, config.resolved()
        self.out = Path(config.out)
        # the test sets and drift prompts are checked now, not after the first stages have run
        suite_sets(eval_suite(self.settings, self.settings["model"]), self.out / "data" / "suite.yaml",
                   label="the lab's test sets")
        if config.overwrite and self.out.exists():
            for path in self.out.iterdir():  # all but the lock this run holds (locking.py)
                if path.name != LOCK_FILE:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "lab_config.json"
        if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(self.settings)):
            raise OpsftError(f"{self.out} holds a lab with other settings; use another --out or --overwrite")
        saved.write_text(json.dumps(self.settings, indent=2) + "\n")
        self.model = self.settings["model"]

    # ---- bookkeeping ------------------------------------------------------------------------------

    def stage(self, number: int, name: str, work) -> dict:
        marker = self.out / "stages" / f"{number}-{name}.json"
        if marker.exists():
            print(f"[lab] stage {number}/7 {name}: done earlier, reused", flush=True)
            return json.loads(marker.read_text())
        print(f"[lab] stage {number}/7 {name} ...", flush=True)
        started = time.perf_counter()
        result = work() or {}
        result["seconds"] = round(time.perf_counter() - started, 1)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"[lab] stage {number}/7 {name}: finished in {result['seconds']:.0f} s", flush=True)
        return result

    def common(self) -> dict:
        return {"progress": self.config.progress}

    # ---- stages ------------------------------------------------------------------------------------

    def build_data(self) -> dict:
        s = self.settings
        data_dir = self.out / "data"
        data_dir.mkdir(exist_ok=True)
        if s["model"] == "tiny":
            from .tiny import build_tiny_model

            texts = [r["question"] + " " + r["solution"] for r in _gym_rows(s["train_data"], s["rationale"])]
            self.model = str(build_tiny_model(data_dir / "tiny-model", texts * 4))
        train = data_dir / "train.jsonl"
        if s["train_data"].startswith("gym:"):
            rows = _gym_rows(s["train_data"], s["rationale"])
            train.write_text("".join(json.dumps(r) + "\n" for r in rows))
            fields = ("question", "solution")
        else:
            train, fields = Path(s["train_data"]), (s["prompt_field"], s["completion_field"])
        return {"model": self.model, "train": str(train), "prompt_field": fields[0], "completion_field": fields[1],
                "suite": str(data_dir / "suite.yaml")}

    def evaluate(self, model: str, out: Path) -> dict:
        from .eval_run import EvalConfig, run_eval

        s, base_drift = self.settings, self.out / "eval" / "base" / "drift" / "base_samples.jsonl"
        drift_log = out / "drift" / "base_samples.jsonl"
        if base_drift.exists() and not drift_log.exists() and out != base_drift.parent.parent:
            drift_log.parent.mkdir(parents=True, exist_ok=True)  # the base's samples are the same for every model
            shutil.copy(base_drift, drift_log)
        return run_eval(EvalConfig(model=model, suite=self.data["suite"], out=str(out),
                                   max_new_tokens=s["eval_max_new_tokens"], drift_limit=None,
                                   drift_max_new_tokens=s["drift_max_new_tokens"], **self.common()))

    def score(self, data: str, out: str, fields: tuple[str | None, str | None]) -> dict:
        from .score_run import ScoreConfig, run_score

        return run_score(ScoreConfig(model=self.model, data=data, out=out, prompt_field=fields[0],
                                     completion_field=fields[1], **self.common()))

    def realign(self) -> dict:
        from .realign_run import RealignConfig, run_realign

        s, d = self.settings, self.data
        summary = run_realign(RealignConfig(
            model=self.model, data=d["train"], prompt_field=d["prompt_field"], completion_field=d["completion_field"],
            out=str(self.out / "realign"), max_new_tokens=s["realign_max_new_tokens"],
            require_correct=s["realign_require_correct"], require_eos=s["realign_require_eos"], **self.common()))
        result = {"kept": summary["kept"], "decoded": summary["decoded"], "dropped": summary["dropped"]}
        if summary["kept"]:
            result["score"] = self.score(str(self.out / "realign" / "realigned.jsonl"),
                                         str(self.out / "score" / "realigned"), (None, None))["phi_mean"]
        return result

    def prefs(self) -> dict:
        from .prefs_run import PrefsConfig, run_prefs

        s, d = self.settings, self.data
        return run_prefs(PrefsConfig(model=self.model, data=d["train"], prompt_field=d["prompt_field"],
                                     completion_field=d["completion_field"], out=str(self.out / "prefs"),
                                     k=s["prefs_k"], max_new_tokens=s["eval_max_new_tokens"], **self.common()))

    def rejection(self) -> dict:
        """The model's own correct answers to the training problems (never the test sets), and their DDT."""
        from .rejection_run import RejectionConfig, run_rejection

        s, d = self.settings, self.data
        summary = run_rejection(RejectionConfig(
            model=self.model, data=d["train"], prompt_field=d["prompt_field"], completion_field=d["completion_field"],
            out=str(self.out / "rejection"), k=s["prefs_k"], max_new_tokens=s["eval_max_new_tokens"],
            require_correct=s["rejection_require_correct"], **self.common()))
        if summary["kept"]:
            self.score(str(self.out / "rejection" / "rejection.jsonl"), str(self.out / "score" / "rejection"),
                       (None, None))
        return summary

    def training_sets(self) -> dict:
        """method data kind -> (data path, fields, tokens per example, examples) for the budget."""
        d, sets = self.data, {}
        kinds = {method_spec(m)[1] for m in self.settings["methods"]}
        if "raw" in kinds:
            sets["raw"] = (d["train"], (d["prompt_field"], d["completion_field"]))
        if "realigned" in kinds and self.realigned.get("kept"):
            sets["realigned"] = (str(self.out / "realign" / "realigned.jsonl"), (None, None))
        if "rejection" in kinds:
            if not (self.out / "rejection" / "summary.json").exists():
                self.rejection()
            if json.loads((self.out / "rejection" / "summary.json").read_text())["kept"]:
                sets["rejection"] = (str(self.out / "rejection" / "rejection.jsonl"), (None, None))
        if "prefs" in kinds:
            if not (self.out / "prefs" / "summary.json").exists():
                self.prefs()
            if json.loads((self.out / "prefs" / "summary.json").read_text())["pairs"]:
                sets["prefs"] = (str(self.out / "prefs" / "prefs.jsonl"), (None, None))
        from transformers import AutoTokenizer

        from .models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model))
        return {kind: (path, fields, _tokens_per_example(path, fields, kind, tokenizer)) for kind, (path, fields)
                in sets.items()}

    def train_all(self) -> dict:
        from .train_run import TrainConfig, run_train

        s, sets, runs = self.settings, self.training_sets(), {}
        for method in s["methods"]:
            loss, kind = method_spec(method)
            for seed in s["seeds"]:
                name = f"{method}-seed{seed}"
                if kind not in sets:
                    runs[name] = {"skipped": f"no {kind} training data: {SOURCES[kind]} gave none"}
                    continue
                path, fields, tokens = sets[kind]
                steps = max(1, round(s["token_budget"] / (s["batch_size"] * tokens)))
                out = self.out / "runs" / name
                if not (out / "train_summary.json").exists() or not (out / "final").exists():
                    print(f"[lab] training {name}: {steps} steps of {s['batch_size']} x ~{tokens:.0f} tokens",
                          flush=True)
                    run_train(TrainConfig(
                        model=self.model, data=path, prompt_field=fields[0], completion_field=fields[1], loss=loss,
                        output_dir=str(out), max_steps=steps, per_device_train_batch_size=s["batch_size"],
                        lora=s["lora"], learning_rate=s["learning_rate"], seed=seed, logging_steps=1,
                        save_steps=max(1, steps // 4), save_total_limit=1, resume=True, **self.common()))
                runs[name] = {"method": method, "seed": seed, "steps": steps, "tokens_per_example": tokens,
                              "train_tokens": round(steps * s["batch_size"] * tokens)}
        return {"runs": runs}

    def run(self) -> dict:
        self.data = self.stage(1, "data", self.build_data)
        self.model = self.data["model"]
        # written on every run, so that a lab cached by an older opsft evaluates with today's suite (drift included)
        Path(self.data["suite"]).write_text(yaml.safe_dump(eval_suite(self.settings, self.model), sort_keys=False))
        self.stage(2, "base", lambda: {"eval": str(self.out / "eval" / "base"),
                                       **_accuracies(self.evaluate(self.model, self.out / "eval" / "base"))})
        d = self.data
        self.stage(3, "score", lambda: {"phi_mean": self.score(d["train"], str(self.out / "score" / "raw"),
                                                               (d["prompt_field"], d["completion_field"]))["phi_mean"]})
        needs_realign = any(method_spec(m)[1] == "realigned" for m in self.settings["methods"])
        self.realigned = self.stage(4, "realign", self.realign if needs_realign else lambda: {"skipped": "no method "
                                                                                              "uses it"})
        runs = self.stage(5, "train", self.train_all)["runs"]
        self.stage(6, "eval", lambda: {"runs": {
            name: _accuracies(self.evaluate(str(self.out / "runs" / name / "final"), self.out / "runs" / name / "eval"))
            for name, r in runs.items() if "skipped" not in r}})
        from .lab_report import write_report

        report = self.stage(7, "report", lambda: write_report(self.out, self.settings, runs))
        print("\n" + (self.out / "report" / "results.md").read_text(), flush=True)
        print(f"[lab] report: {self.out / 'report' / 'index.html'}", flush=True)
        return report


def run_lab(config: LabConfig) -> dict:
    return Lab(config).run()


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
    """A gym task's rows as question/solution/answer; chain_sum solutions as terse running sums if asked."""
    from .data import load_examples

    rows = []
    for e in load_examples(spec).examples:
        row = {"question": e.row["question"], "solution": e.row["solution"], "answer": e.row["answer"]}
        expression = e.row.get("metadata", {}).get("expression")
        if rationale == "running_sums" and expression:
            row["solution"] = running_sums(expression)
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


def _tokens_per_example(path: str, fields, kind: str, tokenizer) -> float:
    """Mean training tokens per example (prompt + completion) or per pair (prompt + chosen, prompt + rejected),
    tokenized as training renders them (chat template, EOS)."""
    from .data import load_examples, load_preferences
    from .rendering import tokenize_dataset

    if kind == "prefs":
        from .preference_training import fit_pairs

        return fit_pairs(load_preferences(path)[0], tokenizer, max_length=10 ** 9, source=path)[1]
    examples = load_examples(path, prompt_field=fields[0], completion_field=fields[1]).examples
    tokenized, _ = tokenize_dataset(examples, tokenizer, max_length=10 ** 9)
    return sum(len(t.input_ids) for t in tokenized) / len(tokenized) if tokenized else math.nan
