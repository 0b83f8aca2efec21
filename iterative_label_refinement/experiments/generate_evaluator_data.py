"""Pairwise comparison data for the evaluator, from the checkpoints of a ground-truth run.

    python -m iterative_label_refinement.experiments.main --ds_name=gsm8k --save_frequency=0.1 \
        --generate_weak_labels=False
    python -m iterative_label_refinement.experiments.generate_evaluator_data --save_path=<that run dir>

Every `checkpoint-N` (ascending N) answers the questions of the half its run trained on (temperature
0.6); answers are cached per checkpoint in `checkpoint-N/evaluator_answers.json`. Per question the
answers give one or two (better, worse) pairs (`core.evaluator_pairs.build_pairs`); each pair gives two rows:
(A=better, B=worse) labelled `<reject>` and (A=worse, B=better) labelled `<accept>`. Pairs are split
90/10 by question and saved as a `DatasetDict` under `<ILR_SAVE_PATH>/evaluator-data/d=<ds>-ms=<model>-s=<seed>`.
SaferPaca: pairs come from a general-only (`sm=1`) and a safety-only (`sm=2`) run, balanced.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from datasets import Dataset, DatasetDict

from iterative_label_refinement.core.checkpoints import checkpoint_dirs, checkpoint_problem
from iterative_label_refinement.core.cli import FRACTION, NON_NEGATIVE, POSITIVE
from iterative_label_refinement.core.evaluator_pairs import balance, build_pairs, pairs_to_rows, split_by_question
from iterative_label_refinement.core.files import read_json, save_to_disk_atomic, write_json
from iterative_label_refinement.core.layout import evaluator_data_dir, name_value, sibling_with
from iterative_label_refinement.core.settings import ConfigError, get_logger, get_save_path, seed_everything

if TYPE_CHECKING:
    from iterative_label_refinement.core.datasets import DatasetConfig

logger = get_logger(__name__)

ANSWERS_FILE = "evaluator_answers.json"
# The reference's defaults, used when the run dir has no experiment_config.json.
RUN_DEFAULTS = dict(ds_name="gsm8k", model_size="google/gemma-2b", seed=0, n_docs=20000, n_test_docs=10000,
                    lora_rank=64, saferpaca_mode=None, train_with_all_data=False, max_len=None)  # fmt: skip


def make_dataset(pairs: list[dict[str, str]], seed: int = 0) -> DatasetDict:
    train, test = split_by_question(pairs, seed=seed)
    if not train or not test:
        raise ConfigError(f"{len(pairs)} pairs are too few for a 90/10 train/test split; use more --n_docs")
    return DatasetDict(
        train=Dataset.from_list(pairs_to_rows(train)).shuffle(seed=seed).flatten_indices(),
        test=Dataset.from_list(pairs_to_rows(test, start_id=len(train))),
    )


# ---------------------------------------------------------------------------------------------
# Checkpoints and their answers
# ---------------------------------------------------------------------------------------------


def find_checkpoints(run_dir: Path) -> list[Path]:
    """The complete `checkpoint-N` dirs (`core.checkpoints`: torn ones, from a run killed while saving,
    are skipped with a warning) in ascending N, or a clear error saying how to make them."""
    checkpoints = []
    for ckpt in checkpoint_dirs(run_dir):
        problem = checkpoint_problem(ckpt, resumable=False)
        if problem:
            logger.warning("Skipping torn %s (%s)", ckpt, problem)
        else:
            checkpoints.append(ckpt)
    if not checkpoints:
        raise ConfigError(
            f"No checkpoint-N dirs under {run_dir} (torn ones aside): train the ground-truth model with checkpoints, "
            "e.g. "
            "python -m iterative_label_refinement.experiments.main --save_frequency=0.1 --generate_weak_labels=False"
        )
    return checkpoints


def training_questions(ds_name: str, seed: int, n_docs: int, n_test_docs: int, saferpaca_mode: int | None,
                       train_with_all_data: bool) -> Dataset:  # fmt: skip
    """The rows a ground-truth run trained on (half A of the train split, after the training filters)."""
    from iterative_label_refinement.core.datasets import get_dataset_config, load_dataset
    from iterative_label_refinement.core.run_data import filter_rows

    dd = load_dataset(ds_name, seed=seed, split_sizes={"train": n_docs, "test": n_test_docs})
    train = dd["train"] if train_with_all_data else dd["train"].train_test_split(test_size=0.5, seed=seed)["train"]
    return filter_rows(train, get_dataset_config(ds_name), None, 0, saferpaca_mode, preference=False)


def checkpoint_answers(checkpoint: Path, rows: Dataset, run: dict[str, Any], sampling: dict[str, float], seed: int,
                       do_eval: bool, force_regenerate: bool) -> dict[str, Any]:  # fmt: skip
    """The checkpoint's answers (and scores) for `rows`, from its cache file when it matches.

    `sampling` is {temperature, top_k, top_p}; a cache made with other settings (or before top-k and
    top-p were recorded, when the library's top-k of 50 applied) is regenerated.
    """
    from iterative_label_refinement.core.datasets import get_dataset_config

    questions = list(rows["question"])
    cache_file = checkpoint / ANSWERS_FILE
    cached = read_json(cache_file) if cache_file.exists() and not force_regenerate else None
    settings_differ = cached and any(cached.get(k) != v for k, v in dict(sampling, seed=seed).items())
    if cached and (cached["questions"] != questions or settings_differ):
        logger.warning("%s was made for other questions or settings: regenerating", cache_file)
        cached = None
    if cached is None:
        cached = dict(questions=questions, **sampling, seed=seed, acc=None,
                      answers=_generate(checkpoint, questions, run, sampling, seed))  # fmt: skip
        write_json(cache_file, cached)
    else:
        logger.info("Reusing cached answers %s", cache_file)
    if do_eval and cached["acc"] is None:
        metric = get_dataset_config(run["ds_name"]).metric
        cached["acc"] = [float(a) for a in metric(cached["answers"], list(rows["answer"]), list(rows))]
        write_json(cache_file, cached)
    return cached if do_eval else dict(cached, acc=[None] * len(questions))


def _generate(checkpoint: Path, questions: list[str], run: dict[str, Any], sampling: dict[str, float],
              seed: int) -> list[str]:  # fmt: skip
    from iterative_label_refinement.core.datasets import get_dataset_config
    from iterative_label_refinement.core.generation import generate_answers
    from iterative_label_refinement.core.models import get_model_config, load_tokenizer
    from iterative_label_refinement.core.saved_models import load_trained

    model = load_trained(run["model_size"], checkpoint)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # a LoRA checkpoint is only read: merged, it generates faster
    gens = generate_answers(model, load_tokenizer(run["model_size"]), questions,
                            max_new_tokens=run.get("max_len") or get_dataset_config(run["ds_name"]).max_len,
                            batch_size=get_model_config(run["model_size"]).eval_batch_size, **sampling,
                            seed=seed, desc=checkpoint.name)  # fmt: skip
    return [texts[0] for texts in gens.texts]


def run_pairs(run_dir: Path, run: dict[str, Any], sampling: dict[str, float], do_eval: bool,
              force_regenerate: bool) -> list[dict[str, str]]:  # fmt: skip
    checkpoints = find_checkpoints(run_dir)
    rows = training_questions(run["ds_name"], run["seed"], run["n_docs"], run["n_test_docs"], run["saferpaca_mode"],
                              run["train_with_all_data"])  # fmt: skip
    logger.info("%s: %d checkpoints x %d questions", run_dir.name, len(checkpoints), len(rows))
    answers, accs = [], []
    for checkpoint in checkpoints:
        cached = checkpoint_answers(checkpoint, rows, run, sampling, run["seed"], do_eval, force_regenerate)
        answers.append(cached["answers"])
        accs.append(cached["acc"])
    return build_pairs(list(rows["question"]), list(rows["answer"]), answers, accs, seed=run["seed"])


def _run_settings(run_dir: Path | None, **flags: Any) -> dict[str, Any]:
    """The run's own config, overridden by flags that were given."""
    config_file = run_dir / "experiment_config.json" if run_dir else None
    config = read_json(config_file) if config_file and config_file.exists() else {}
    run = {k: config.get(k, default) for k, default in RUN_DEFAULTS.items()}
    run.update({k: v for k, v in flags.items() if v is not None})
    return run


def source_runs(run_dir: Path | None, run: dict[str, Any], dataset: DatasetConfig,
                other_save_path: str | None) -> dict[str, tuple[Path, dict[str, Any]]]:  # fmt: skip
    """The ground-truth runs whose checkpoints answer: {source: (run dir, its settings)}. One run
    (source ""), or, for a task with `evaluator_modes`, one run per mode, each answering the questions
    of its subset (source: the subset, SaferPaca's `general` and `safety`). `run_dir` is the first
    mode's; another mode's is its sibling named with that mode (`sm=1` -> `sm=2`), or, for a task of two
    modes, `other_save_path` (`--safety_save_path`)."""
    if run_dir is None or not run_dir.is_dir():
        raise ConfigError(f"--save_path={run_dir} is not a directory: pass the ground-truth run dir with checkpoint-N")
    if not dataset.evaluator_modes:
        return {"": (run_dir, run)}
    first, *others = dataset.evaluator_modes
    if other_save_path and len(others) != 1:
        raise ConfigError(f"--safety_save_path names the run of {dataset.name}'s second evaluator mode, but it has "
                          f"{len(others) + 1} modes {dataset.evaluator_modes}: name the runs by their modes")  # fmt: skip
    name = dataset.modes[first]
    if not other_save_path and name_value(run_dir, "saferpaca_mode") != str(first):
        raise ConfigError(f"{dataset.name} evaluator data needs a {name}-only run (sm={first} in its name), got "
                          f"{run_dir}; or pass --safety_save_path")  # fmt: skip
    runs = {name: (run_dir, dict(run, saferpaca_mode=first))}
    for mode in others:
        other = Path(other_save_path) if other_save_path else sibling_with(run_dir, "saferpaca_mode", mode)
        if not other.is_dir():
            raise ConfigError(f"{dataset.name} {dataset.modes[mode]}-only run {other} does not exist: train it with "
                              f"--saferpaca_mode={mode}")  # fmt: skip
        runs[dataset.modes[mode]] = (other, dict(run, saferpaca_mode=mode))
    return runs


def main(
    save_path: str | None = None,
    model_size: str | None = None,
    ds_name: str | None = None,
    temperature: Annotated[float, NON_NEGATIVE] = 0.6,
    top_k: Annotated[int, NON_NEGATIVE] = 0,
    top_p: Annotated[float, FRACTION] = 1.0,
    seed: Annotated[int | None, NON_NEGATIVE] = None,
    n_docs: Annotated[int | None, POSITIVE] = None,
    n_test_docs: Annotated[int | None, POSITIVE] = None,
    do_eval: bool = True,
    force_regenerate: bool = False,
    safety_save_path: str | None = None,
    results_folder: str | None = None,
    print_save_path: bool = False,
) -> dict[str, Any] | str:
    """Build the evaluator's pair data from the checkpoints of the ground-truth run at `save_path`.

    model_size, ds_name, seed, n_docs, n_test_docs: default to the run's experiment_config.json.
    temperature, top_k, top_p: how answers are sampled (top-k and top-p off by default: the whole distribution).
    do_eval: score answers with the task metric; off, every answer counts as worse than gold.
    safety_save_path: SaferPaca's safety-only run (default: `save_path` with sm=1 -> sm=2).
    force_regenerate: sample every checkpoint's answers again and remake the data; without it, data
        that exists is reused when it was made as this call would make it, and refused otherwise.
    print_save_path: print where the data goes (named by ds_name, model_size, seed) and stop.
    """
    run_dir = Path(save_path) if save_path else None
    run = _run_settings(run_dir, model_size=model_size, ds_name=ds_name, seed=seed, n_docs=n_docs,
                        n_test_docs=n_test_docs)  # fmt: skip
    from iterative_label_refinement.core.datasets import get_dataset_config
    from iterative_label_refinement.core.generation import check_sampling
    from iterative_label_refinement.core.models import get_model_config

    dataset = get_dataset_config(run["ds_name"])
    get_model_config(run["model_size"])
    check_sampling(top_k, top_p)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    out = evaluator_data_dir(get_save_path(results_folder), run["ds_name"], run["model_size"], run["seed"])
    if print_save_path:
        print(out)
        return str(out)
    runs = source_runs(run_dir, run, dataset, safety_save_path)
    for directory, _ in runs.values():
        find_checkpoints(directory)  # fail before any generation
    return write_pairs(out, runs, run, sampling, do_eval, force_regenerate)


def write_pairs(out: Path, runs: dict[str, tuple[Path, dict[str, Any]]], run: dict[str, Any],
                sampling: dict[str, float], do_eval: bool, force_regenerate: bool) -> dict[str, Any]:  # fmt: skip
    """Answer with every checkpoint of `runs`, make the pairs and save them at `out` (or reuse them)."""
    from iterative_label_refinement.core.locks import writing
    from iterative_label_refinement.core.models import weights_id
    from iterative_label_refinement.core.provenance import RECORD, reuse, run_identity

    # What makes the pairs (core.provenance): the ground-truth runs, the model their checkpoints
    # load on, which questions, and how answers are sampled and scored.
    record = dict(artifact="evaluator_data", ds_name=run["ds_name"], model_weights=weights_id(run["model_size"]),
                  seed=run["seed"], n_docs=run["n_docs"], n_test_docs=run["n_test_docs"], sampling=sampling,
                  do_eval=do_eval, runs={s: run_identity(d) for s, (d, _) in runs.items()})  # fmt: skip
    if not force_regenerate and reuse(out, record, "--force_regenerate=True"):  # before the lock: no lock file
        return _reused(out)
    with writing(out):
        if not force_regenerate and reuse(out, record, "--force_regenerate=True"):  # made while this one waited
            return _reused(out)
        logger.info("Writing %s", out)  # at the start too: generating the pairs takes long
        seed_everything(run["seed"])
        pairs_by_source = {s: run_pairs(d, r, sampling, do_eval, force_regenerate) for s, (d, r) in runs.items()}
        pairs = balance(pairs_by_source, run["seed"]) if len(runs) > 1 else pairs_by_source[""]
        dd = make_dataset(pairs, seed=run["seed"])
        kinds = {k: sum(p["kind"] == k for p in pairs) for k in sorted({p["kind"] for p in pairs})}
        config = dict(run, **sampling, do_eval=do_eval, pair_kinds=kinds, n_pairs=len(pairs),
                      runs={s: str(d) for s, (d, _) in runs.items()})  # fmt: skip
        save_to_disk_atomic(dd, out, {"experiment_config.json": config, RECORD: record})
    logger.info("Saved %d pairs (%s): %d train rows, %d test rows -> %s", len(pairs), kinds, len(dd["train"]),
                len(dd["test"]), out)  # fmt: skip
    print(out)
    return {"save_path": str(out), "n_pairs": len(pairs), "n_train": len(dd["train"]), "n_test": len(dd["test"])}


def _reused(out: Path) -> dict[str, Any]:
    logger.info("%s exists, made as this step would make it: nothing to do", out)
    print(out)
    return {"save_path": str(out), "skipped": True}


if __name__ == "__main__":
    from iterative_label_refinement.core.cli import run_cli

    run_cli(main)
