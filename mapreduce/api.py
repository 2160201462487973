"""The Python API: summarize long documents in this process, or on a Ray cluster.

    from mapreduce.api import Summarizer, RaySummarizer

    summarizer = Summarizer.from_config("configs/smollm2_cpu.yaml", adapter="adapters/smollm2-cnndm")
    result = summarizer.summarize(text)            # one process, one CPU or GPU, no Ray
    result.summary, result.error, result.tree      # a DocumentResult: tree = chunk spans + every level

    with RaySummarizer.from_config("configs/smollm2_cpu.yaml", adapter=...) as ray_summarizer:
        for result in ray_summarizer.summarize_many({"a": text_a, "b": text_b}):   # Ray actors
            result.doc_id, result.summary, result.error

Both drive the same mapreduce.document.DocumentJob and return the same DocumentResult:
`Summarizer` runs each level as one call here; `RaySummarizer` is the engine the CLI and
the batch job use, batching chunks of many documents over actors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Union

from core.config import Config, load_config, replace_config

ConfigLike = Union[Config, str, Path, None]


def resolve_config(config: ConfigLike = None, **overrides) -> Config:
    """A Config from a Config, a YAML path or None (defaults), with flat key overrides."""
    if isinstance(config, Config):
        return replace_config(config, overrides) if overrides else config
    return load_config(config, overrides)




class Summarizer:
    """One model in this process: the engine's own document lifecycle, each level one batched call, no Ray."""

    def __init__(self, cfg: Config, model, tokenizer, chunker=None):
        from mapreduce.chunking import Chunker
        from mapreduce.document import DocumentSteps

        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.steps = DocumentSteps(cfg, chunker or Chunker.from_config(tokenizer, cfg))  # the engine's steps and units
        self.chunker = self.steps.chunker

    @classmethod
    def from_config(cls, config: ConfigLike = None, **overrides) -> "Summarizer":
        from core.models import load_for_inference

        cfg = resolve_config(config, **overrides)
        model, tokenizer = load_for_inference(cfg.model)
        return cls(cfg, model, tokenizer)

    def _generate(self, texts: list[str], template: str, max_new_tokens: Optional[int] = None) -> list[str]:
        from core.generation import summarize_texts, with_max_new_tokens
        from core.models import adapter_used

        gen = with_max_new_tokens(self.cfg.generation, max_new_tokens)
        return summarize_texts(self.model, self.tokenizer, texts, template, self.cfg.prompt_budget, gen,
                               adapter=adapter_used(self.cfg, template))

    def summarize(self, text: Union[str, bytes], doc_id: str = "document"):
        """A DocumentResult, as RaySummarizer's: `.summary`, or `.error` (one line) when it failed.

        TypeError for anything but text (bytes are read as UTF-8).
        """
        from mapreduce.document import document_text

        text = document_text(text)  # a type error before anything else
        return self.steps.run(doc_id, text, self._generate)


class RaySummarizer:
    """The Ray engine behind a context manager: many documents, batched across actors."""

    def __init__(self, cfg: Config, say=None):
        self.cfg, self.say, self._context, self.engine = cfg, say, None, None

    @classmethod
    def from_config(cls, config: ConfigLike = None, say=None, **overrides) -> "RaySummarizer":
        return cls(resolve_config(config, **overrides), say)

    def __enter__(self) -> "RaySummarizer":
        from mapreduce.engine import open_engine

        self._context = open_engine(self.cfg, say=self.say)
        self.engine = self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
        self.engine = None

    def summarize(self, text: str, doc_id: str = "document"):
        return self.engine.summarize(text, doc_id)

    def summarize_many(self, docs: Union[Mapping[str, str], Iterable[tuple[str, str]]]) -> Iterator:
        """DocumentResults in completion order; a failed document is a result with `.error`."""
        items = docs.items() if isinstance(docs, Mapping) else docs
        return self.engine.run(items)
