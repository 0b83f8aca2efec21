#!/usr/bin/env bash
# GSM8K evaluator on Mistral-7B, for the 70B runs (weak model and evaluator are Mistral-7B).
# The evaluator trains with LoRA (Mistral-7B's registered evaluator_lora_rank, 64): the reference's full
# fine-tune holds 116 GB of fp32 weights, gradients and AdamW states, more than one 80 GB GPU
# (python -m iterative_label_refinement.experiments.plan). LoRA trains at Mistral's LoRA learning rate, 1e-4;
# EVALUATOR_FLAGS="--lora_rank=0 --lr=1e-6" is the reference's full fine-tune, for more GPUs.
# Any setting of the pipeline script can be overridden from the environment.
set -euo pipefail
export DS_NAME=${DS_NAME:-gsm8k}
export EVALUATOR_MODEL=${EVALUATOR_MODEL:-mistralai/Mistral-7B-v0.1}
exec bash "$(dirname "$0")/../evaluator.sh" "$@"
