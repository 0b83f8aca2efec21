"""The comparison evaluator: load it from its dir and ask it, in batches, "accept changing A to B?".

An evaluator dir holds the model and its tokenizer, `experiment_config.json` (with `evaluator_kind`)
and `results_summary.json` (with `pair_accuracy`), so it loads from its own dir with nothing else.
Two kinds answer through the same interface:

* `classifier` (the paper's, default): a 2-label sequence classifier over the evaluator prompt;
  label 1 means `<accept>`.
* `likelihood` (a toy-scale stand-in, see docs/components.md): a causal LM; P(accept) =
  sigmoid(scale * (log p(B | question) - log p(A | question))), `scale` fitted on the training pairs.

A third, `judge`, has no dir: an LLM judge behind an OpenAI-compatible endpoint (`core.judge`,
`--feedback=judge`), P(accept) = p_B / (p_A + p_B) from its answer's token log-probabilities.

`debiased_scores` is the one scoring function of `ilr` and `dpo` (whether a proposal should replace a label): it asks both
position orders, so a classifier that favours (A) or (B) cannot tilt the decision.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from iterative_label_refinement.core.files import read_json, write_json
from iterative_label_refinement.core.judge import JudgeEndpoint, judge_template, preference
from iterative_label_refinement.core.judge_client import ApiJudge
from iterative_label_refinement.core.prompts import format_evaluator_prompt
from iterative_label_refinement.core.settings import ConfigError

EVALUATOR_KINDS = ("classifier", "likelihood")
ACCEPT_LABEL = 1  # the classifier's label id for `<accept>`


def check_evaluator_kind(kind: str, where: str = "") -> str:
    """`kind` if it is one of EVALUATOR_KINDS, else a ConfigError naming it (and `where` it came from)."""
    if kind not in EVALUATOR_KINDS:
        raise ConfigError(f"{where}unknown evaluator_kind {kind!r}. Valid: {list(EVALUATOR_KINDS)}")
    return kind


class Evaluator(ABC):
    """Answers "having given answer A, do you accept changing it to answer B?" with P(accept)."""

    kind: str

    def __init__(self, model: Any, tokenizer: Any, config: dict[str, Any] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abstractmethod
    def p_accept(self, questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
                 batch_size: int = 32) -> np.ndarray:  # fmt: skip
        """P(accept) in [0, 1] for each (question, A, B)."""


def _check_lengths(*columns: Sequence[str]) -> int:
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise ConfigError(f"questions and answers must have the same length, got {[len(c) for c in columns]}")
    return lengths.pop()


def _length_batches(lengths: Sequence[int], batch_size: int, desc: str) -> Iterable[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return tqdm(batches, desc=desc, disable=len(batches) <= 1)


def _pad(sequences: list[list[int]], value: int, side: str) -> torch.Tensor:
    """Training's right padding (`core.train.pad_right`), mirrored for left padding."""
    from iterative_label_refinement.core.train import pad_right

    if side == "right":
        return pad_right(sequences, value)
    return pad_right([s[::-1] for s in sequences], value).flip(-1)


class ClassifierEvaluator(Evaluator):
    """The paper's evaluator: a 2-label sequence classifier over the evaluator prompt."""

    kind = "classifier"

    @torch.no_grad()
    def p_accept(self, questions, answers_a, answers_b, batch_size=32) -> np.ndarray:
        n = _check_lengths(questions, answers_a, answers_b)
        if n == 0:
            return np.zeros(0)
        tok = self.tokenizer
        prompts = [format_evaluator_prompt(q, a, b) for q, a, b in zip(questions, answers_a, answers_b)]
        from iterative_label_refinement.core.models import prompt_prefix_ids

        # As the evaluator was trained: the model's BOS policy, no other special tokens.
        ids = [prompt_prefix_ids(tok) + x for x in tok(prompts, add_special_tokens=False)["input_ids"]]
        out = np.zeros(n, dtype=np.float64)
        for batch in _length_batches([len(x) for x in ids], batch_size, "evaluator"):
            seqs = [ids[i] for i in batch]
            inputs = {"input_ids": _pad(seqs, tok.pad_token_id, tok.padding_side)}
            if tok.padding_side == "left":
                # Mask the leading pads and give every real token the position it has unpadded.
                mask = _pad([[1] * len(s) for s in seqs], 0, "left")
                inputs.update(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
            # Right padding needs no mask: causal attention hides trailing pads from every real token.
            # Either way the head pools the last token that is not `pad_token_id` (set in the config).
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
            out[batch] = logits.double().softmax(-1)[:, ACCEPT_LABEL].cpu().numpy()
        return out


class LikelihoodEvaluator(Evaluator):
    """A causal LM preferring the answer it finds more probable (a stand-in where no classifier learns)."""

    kind = "likelihood"

    @property
    def scale(self) -> float:
        return float(self.config.get("likelihood_scale", 1.0))

    @torch.no_grad()
    def answer_logps(self, questions: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """log p(answer + eos | SFT prompt), summed over the answer's tokens."""
        from iterative_label_refinement.core.datasets import tokenize_example
        from iterative_label_refinement.core.logps import sequence_logps

        _check_lengths(questions, answers)
        examples = [tokenize_example(self.tokenizer, q, a) for q, a in zip(questions, answers)]
        out = np.zeros(len(examples), dtype=np.float64)
        for batch in _length_batches([len(e["input_ids"]) for e in examples], batch_size, "likelihood"):
            # Right padding: real tokens keep their positions and causal attention hides the pads after them.
            ids = _pad([examples[i]["input_ids"] for i in batch], self.tokenizer.pad_token_id, "right")
            labels = _pad([examples[i]["labels"] for i in batch], -100, "right")
            logits = self.model(input_ids=ids.to(self.device)).logits
            out[batch] = sequence_logps(logits, labels.to(self.device)).cpu().numpy()
        return out

    def p_accept(self, questions, answers_a, answers_b, batch_size=32) -> np.ndarray:
        if _check_lengths(questions, answers_a, answers_b) == 0:
            return np.zeros(0)
        # Each distinct (question, answer) is scored once: debiased scoring asks for every answer twice.
        keys = list(dict.fromkeys(list(zip(questions, answers_a)) + list(zip(questions, answers_b))))
        logps = self.answer_logps([k[0] for k in keys], [k[1] for k in keys], batch_size)
        index = {k: i for i, k in enumerate(keys)}
        la = logps[[index[k] for k in zip(questions, answers_a)]]
        lb = logps[[index[k] for k in zip(questions, answers_b)]]
        return 0.5 * (1.0 + np.tanh(0.5 * self.scale * (lb - la)))  # sigmoid, without overflow warnings


class JudgeEvaluator(Evaluator):
    """An LLM judge as the comparison evaluator of `ilr` and `dpo` (`--feedback=judge`)."""

    kind = "judge"

    def __init__(self, endpoint: JudgeEndpoint, ds_name: str, cache_dir: str | Path | None = None,
                 **request_kwargs: Any):  # fmt: skip
        """request_kwargs: `post_json`'s max_retries, backoff_s, timeout_s, max_wait_s, sleep."""
        # No model here: the judge runs behind the endpoint (the base class's model is never read).
        self.config = {"evaluator_kind": self.kind}
        self.endpoint = endpoint
        self.template = judge_template(ds_name)
        self.client = ApiJudge(endpoint.model, endpoint.base_url, endpoint.api_key, cache_dir=cache_dir,
                               **request_kwargs)  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """What provenance records of the judge: base URL, model and the template's digest."""
        digest = hashlib.sha256(self.template.encode()).hexdigest()[:16]
        return {"judge": {"base_url": self.endpoint.base_url, "model": self.endpoint.model, "template": digest}}

    def messages(self, question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        content = self.template.format(question=question, answer_a=answer_a, answer_b=answer_b)
        return [{"role": "user", "content": content}]

    def p_accept(self, questions, answers_a, answers_b, batch_size=32) -> np.ndarray:
        _check_lengths(questions, answers_a, answers_b)
        conversations = [self.messages(q, a, b) for q, a, b in zip(questions, answers_a, answers_b)]
        probs = self.client.cached_choice_probs(conversations, need_a_label=True)
        return np.array([preference(p_a, p_b) for p_a, p_b in probs], dtype=np.float64)


def debiased_scores(evaluator: Evaluator, questions: Sequence[str], current: Sequence[str],
                    proposal: Sequence[str], batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """P(the proposal should replace the current answer), position-debiased:
    mean(P(accept | A=current, B=proposal), P(reject | A=proposal, B=current)).

    Both orders go through one batched call. Always score(A, B) = 1 - score(B, A).
    """
    n = _check_lengths(questions, current, proposal)
    q, cur, prop = list(questions), list(current), list(proposal)
    p = evaluator.p_accept(q + q, cur + prop, prop + cur, batch_size=batch_size)
    return 0.5 * (p[:n] + (1.0 - p[n:]))


# ---------------------------------------------------------------------------------------------
# The evaluator dir
# ---------------------------------------------------------------------------------------------


def save_evaluator(model: Any, tokenizer: Any, path: str | Path, config: dict[str, Any]) -> None:
    """Model, tokenizer and `experiment_config.json`; the pad id goes into the model config so that
    the classifier finds the last real token without being told."""
    kind = check_evaluator_kind(config.get("evaluator_kind", "classifier"))
    path = Path(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    write_json(path / "experiment_config.json", {**config, "evaluator_kind": kind})


def load_feedback_evaluator(evaluator_path: str | None, use_oracle_feedback: bool) -> Evaluator | None:
    """The evaluator `ilr`/`dpo` ask, or None with oracle feedback (then none is loaded or needed)."""
    if use_oracle_feedback:
        return None
    if not evaluator_path:
        raise ConfigError("--evaluator_path is required unless --use_oracle_feedback")
    return load_evaluator(evaluator_path)


def load_evaluator(path: str | Path, device: torch.device | str | None = None) -> Evaluator:
    """The evaluator saved in `path`; its kind comes from `experiment_config.json`."""
    from transformers import AutoConfig

    from iterative_label_refinement.core.models import load_model, load_tokenizer

    path = Path(path)
    if not (path / "experiment_config.json").exists():
        raise ConfigError(f"{path} is not an evaluator dir (no experiment_config.json); train one with "
                          "python -m iterative_label_refinement.core.train_evaluator")  # fmt: skip
    config = read_json(path / "experiment_config.json")
    kind = check_evaluator_kind(config.get("evaluator_kind", "classifier"), where=f"{path}: ")
    if not (path / "config.json").exists():
        raise ConfigError(f"{path} holds no model (config.json missing)")
    if not (path / "tokenizer_config.json").exists():
        raise ConfigError(f"{path} holds no tokenizer (tokenizer_config.json missing); the evaluator must be "
                          "saved with its tokenizer")  # fmt: skip
    architectures = AutoConfig.from_pretrained(str(path)).architectures or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if kind == "classifier" and not is_classifier:
        raise ConfigError(f"{path} has no sequence-classification head (architectures: {architectures}); "
                          "a classifier evaluator must be trained with core.train_evaluator")  # fmt: skip
    tokenizer = load_tokenizer(str(path))
    tokenizer.padding_side = "right"  # scoring's fast path (no attention mask); left padding works too
    if kind == "classifier":
        model = load_model(str(path), kind="classifier", gradient_checkpointing=False, device=device)
        return ClassifierEvaluator(model, tokenizer, config)
    model = load_model(str(path), gradient_checkpointing=False, device=device)
    return LikelihoodEvaluator(model, tokenizer, config)
