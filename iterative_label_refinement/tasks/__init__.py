"""The paper's tasks, one module each beside its metric: importing a module registers its task
(`core.datasets.register_dataset`). `iterative_label_refinement.plugins` imports them all."""
