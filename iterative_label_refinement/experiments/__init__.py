"""The experiments: the project's top floor, whose modules are its command lines. Importing any of
them first registers the tasks and models (`iterative_label_refinement.plugins`)."""

from iterative_label_refinement.plugins import load_plugins

load_plugins()
