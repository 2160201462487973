"""`summarizer` console command: one entry point, one subcommand per job.

It sits at the top, above the packages it dispatches to: core/ stays the ground floor
and names nothing above it.

Each subcommand is the same program as its module entry point:
    summarizer train     == python -m training.train
    summarizer evaluate  == python -m evaluation.evaluate
    summarizer summarize == python -m mapreduce.cli summarize
    summarizer batch     == python -m mapreduce.batch
    summarizer fetch     == python -m core.embedded fetch

Two modules have subcommands of their own (mapreduce.cli summarize, core.embedded fetch): the
table names that subcommand and it goes in front of the rest of the command line.
"""

from __future__ import annotations

import importlib
import sys

# command: (module, the module's own subcommand or None, help)
SUBCOMMANDS = {
    "train": ("training.train", None, "fine-tune a LoRA summarization adapter"),
    "evaluate": ("evaluation.evaluate", None, "score base vs adapter vs LEAD-3 on CNN/DailyMail"),
    "summarize": ("mapreduce.cli", "summarize", "summarize long documents (map-reduce on Ray actors)"),
    "batch": ("mapreduce.batch", None, "summarize a JSONL corpus as a resumable Ray batch job"),
    "fetch": ("core.embedded", "fetch", "fetch and convert the embedded CPU model"),
}


def _usage() -> str:
    lines = ["usage: summarizer <command> [options]   (summarizer <command> --help for details)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, subcommand, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return module.main([subcommand, *rest] if subcommand else rest) or 0


if __name__ == "__main__":
    sys.exit(main())
