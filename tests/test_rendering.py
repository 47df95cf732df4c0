"""Examples tokenize exactly as TRL's SFTTrainer tokenizes them for training."""

from __future__ import annotations

import pytest
from conftest import make_tokenizer
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from opsft.inputs.rendering import prompt_format, render_plain, to_trl_record, tokenize_example

CONVERSATIONAL = [
    ([{"role": "user", "content": "Solve 3x + 4 = 19"}], [{"role": "assistant", "content": "x = 5. #### 5"}]),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}],
     [{"role": "assistant", "content": "The answer is 42."}]),
]
TEXT = [("Question: add 17 and 25.\nAnswer:", " 42"), ("hello", " world<|im_end|>")]


def trl_processed(tokenizer, model, records, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=None, bf16=False, use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    return [(row["input_ids"], row["labels"]) for row in trainer.train_dataset]


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat", "plain"])
@pytest.mark.parametrize("examples", [CONVERSATIONAL, TEXT], ids=["messages", "text"])
def test_tokenization_matches_trl_sft_trainer(tiny_model, tmp_path, chat_template, examples):
    tokenizer = make_tokenizer() if chat_template else make_tokenizer(chat_template=None)
    records = [to_trl_record(p, c, tokenizer) for p, c in examples]
    for (prompt, completion), (trl_ids, trl_labels) in zip(examples, trl_processed(tokenizer, tiny_model, records,
                                                                                    tmp_path)):
        ids, start = tokenize_example(prompt, completion, tokenizer)
        assert ids == trl_ids
        assert [i if t >= start else -100 for t, i in enumerate(ids)] == trl_labels


def test_prompt_format_and_plain_rendering():
    assert prompt_format(make_tokenizer()) == "chat"
    plain = make_tokenizer(chat_template=None)
    assert prompt_format(plain) == "plain"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert render_plain(messages, generation_prompt=True) == "System: Be brief.\nUser: 2+2?\nAssistant:\n"
    record = to_trl_record(messages, [{"role": "assistant", "content": "4"}], plain)
    assert record == {"prompt": "System: Be brief.\nUser: 2+2?\nAssistant:\n", "completion": "4"}


def test_completion_starts_after_generation_prompt(tokenizer):
    prompt, completion = CONVERSATIONAL[0]
    ids, start = tokenize_example(prompt, completion, tokenizer)
    assert tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[start:]) == "x = 5. #### 5<|im_end|>\n"
