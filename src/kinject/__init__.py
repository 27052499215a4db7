"""kinject: should knowledge go into an LLM by fine-tuning, by retrieval, or both?

The package is one folder per layer of the pipeline (core, runtime, knowledge, tasks, lm, rag,
synth, train, eval, report, experiment, cli; each imports only the ones before it). Most users
need the command line (`kinject --help`); from Python, the few names below do the main jobs and
are loaded on first use, so `import kinject` stays light:

    load_config(path)          a run's YAML, validated (kinject.experiment.config)
    run(config_path, ...)      run its grid, cached per stage (kinject.experiment.run)
    write_report(run_dir)      the Markdown + HTML report of a run (kinject.report.build)
    load_task(spec)            a task by name or file: "sciq", "mmlu:anatomy", "mine.jsonl@free"
    KinjectError               the one error bad input raises; its message is one line
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_config": "kinject.experiment.config",
    "run": "kinject.experiment.run",
    "write_report": "kinject.report.build",
    "load_task": "kinject.tasks.registry",
    "KinjectError": "kinject.core.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """The public names, imported from their layer when first asked for."""
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kinject' has no attribute '{name}'")
