"""How an example becomes tokens, exactly as TRL's SFTTrainer will render it for training.

An example is a prompt and a completion in TRL's shapes: both strings (plain language modelling:
the text is concatenated, an EOS is appended to the completion if missing) or both message lists
(rendered with the tokenizer's chat template; the prompt with the generation prompt). The
completion starts where the tokenized prompt and prompt+completion first differ, as in TRL.

A tokenizer with no chat template renders message lists in the plain format below, and the
result is then trained on as plain text, so a score still means the same thing as the loss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trl.data_utils import common_prefix_length

from ..runtime.errors import DataError, OpsftError

if TYPE_CHECKING:
    from .data import Example

Messages = list[dict[str, Any]]

PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def prompt_format(tokenizer) -> str:
    """'chat' when the tokenizer has a chat template (message lists go through it), else 'plain'."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


def text_of(part: str | Messages) -> str:
    """The text of a prompt or completion: the string itself, or its messages' contents joined."""
    return part if isinstance(part, str) else "".join(m["content"] for m in part)


def render_plain(messages: Messages, *, generation_prompt: bool) -> str:
    """The plain format: 'User: <content>\\n' per message, then 'Assistant:\\n' to start the reply."""
    text = "".join(f"{PLAIN_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}\n" for m in messages)
    return text + ("Assistant:\n" if generation_prompt else "")


def to_trl_record(prompt: str | Messages, completion: str | Messages, tokenizer) -> dict[str, Any]:
    """The {'prompt', 'completion'} record to hand TRL: message lists stay message lists under a
    chat template and become plain text without one."""
    if isinstance(prompt, list) and prompt_format(tokenizer) == "plain":
        return {"prompt": render_plain(prompt, generation_prompt=True), "completion": text_of(completion)}
    return {"prompt": prompt, "completion": completion}


def tokenize_example(prompt: str | Messages, completion: str | Messages, tokenizer) -> tuple[list[int], int]:
    """(input_ids of prompt + completion, index of the first completion token), as TRL tokenizes them."""
    record = to_trl_record(prompt, completion, tokenizer)
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list):
        input_ids = _chat_ids(tokenizer, prompt + completion)
    else:
        eos = tokenizer.eos_token or ""
        if not completion.endswith(eos):
            completion = completion + eos
        input_ids = tokenizer(text=prompt + completion)["input_ids"]
    return list(input_ids), common_prefix_length(prompt_ids(prompt, tokenizer), input_ids)


def prompt_ids(prompt: str | Messages, tokenizer) -> list[int]:
    """The prompt alone as the model sees it before writing a completion (with the generation prompt)."""
    if isinstance(prompt, list) and prompt_format(tokenizer) == "plain":
        prompt = render_plain(prompt, generation_prompt=True)
    if isinstance(prompt, list):
        return list(_chat_ids(tokenizer, prompt, add_generation_prompt=True))
    return list(tokenizer(text=prompt)["input_ids"])


def _chat_ids(tokenizer, messages: Messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


@dataclass
class TokenizedExample:
    index: int
    input_ids: list[int]
    completion_start: int  # position of the first completion token in input_ids
    truncated: bool  # the completion was cut at max_length (as training would cut it)


def tokenize_dataset(examples: Sequence[Example], tokenizer, *, max_length: int = 1024,
                         skip_invalid: bool = False, source: str = "data") -> tuple[list[TokenizedExample], list[DataError]]:
    """Tokenize as training will; a prompt that fills max_length or a completion with no tokens is an
    error (or, with skip_invalid, counted). A longer completion is truncated at max_length, as TRL does."""
    tokenized, skipped = [], []
    for example in examples:
        input_ids, start = tokenize_example(example.prompt, example.completion, tokenizer)
        try:
            if start == 0:
                raise example.error("renders to no tokens before the completion", source=source, field="prompt",
                                    reason="empty_prompt")
            if start >= max_length:
                raise prompt_fills_max_length(start, max_length, source=source, row=example.index + 1,
                                              line=example.line)
            if len(input_ids) == start:
                raise example.error("renders to no tokens", source=source, field="completion",
                                    reason="empty_completion")
        except DataError as error:
            if not skip_invalid:
                raise
            skipped.append(error)
            continue
        tokenized.append(TokenizedExample(example.index, input_ids[:max_length], start, len(input_ids) > max_length))
    return tokenized, skipped


def prompt_fills_max_length(prompt_tokens: int, max_length: int, *, source: str, row: int,
                            line: int | None = None) -> DataError:
    """The error for a prompt that leaves no room for a completion token under max_length."""
    return DataError(f"is {prompt_tokens} tokens, not shorter than --max-length {max_length}", source=source,
                     row=row, line=line, field="prompt", reason="prompt_too_long")


def fitting_prompts(examples: Sequence[Example], render, budget: int, max_length: int, *, source: str,
                    skip_invalid: bool, skipped: list[DataError], what: str = "prompt") -> dict[int, list[int]]:
    """{index: render(example)} for the examples whose rendered prompt leaves `budget` new tokens under
    max_length; any other is an error, or with skip_invalid counted in `skipped`."""
    prompts = {}
    for example in examples:
        ids = render(example)
        if len(ids) + budget > max_length:
            error = example.error(f"{what} of {len(ids)} tokens + {budget} new tokens exceeds --max-length "
                                  f"{max_length}", source=source, field="prompt", reason="prompt_too_long")
            if not skip_invalid:
                raise error
            skipped.append(error)
            continue
        prompts[example.index] = ids
    return prompts


def fingerprint(tokenized: Sequence[TokenizedExample]) -> str:
    """sha256 of the tokenized inputs: another dataset, tokenizer, template or --max-length changes it."""
    digest = hashlib.sha256()
    for t in tokenized:
        digest.update(json.dumps([t.index, t.completion_start, t.input_ids]).encode())
    return digest.hexdigest()


def rows_sha256(rows: list[dict]) -> str:
    """sha256 of rows as they are handed to a TRL trainer (preference pairs, SDFT's prompts): other data or another
    rendering changes it."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def use_prompt_format(tokenizer, chosen: str | None, model: str, has_message_prompts: bool) -> str:
    """Fix how message-list prompts are rendered for generation, and say which: 'chat' (the tokenizer's chat
    template) or 'plain' (`render_plain`). Without a choice, a model with no chat template is an error when
    the prompts are messages: generating from a format the model was never tuned on is a silent mistake."""
    has_template = prompt_format(tokenizer) == "chat"
    if chosen == "plain":
        tokenizer.chat_template = None
        return "plain"
    if chosen == "chat" and not has_template:
        raise OpsftError(f"model '{model}' has no chat template; use --prompt-format plain ('User: ...' / "
                         f"'Assistant:' prompts) or a model with a chat template")
    if chosen is None and has_message_prompts and not has_template:
        raise OpsftError(f"model '{model}' has no chat template and no --prompt-format was given: pass "
                         f"--prompt-format plain to render prompts as 'User: ...\\nAssistant:', or use a model "
                         f"with a chat template")
    return "chat" if has_template else "plain"
