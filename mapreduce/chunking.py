"""Split a long document into overlapping chunks, measured in the model's own tokens.

The adapter was trained on prompts of at most `max_length - max_new_tokens` tokens, so a
chunk is sized to fill that budget once the prompt template is wrapped around it:

    chunk_size + template tokens <= max_length - max_new_tokens   (checked, else ConfigError)

LangChain's RecursiveCharacterTextSplitter does the splitting, counting length with the
model's Hugging Face tokenizer and breaking at paragraphs first, then lines, sentences,
clauses, words, and characters only as a last resort. It cuts disjoint "cores" of
chunk_size - chunk_overlap tokens; each chunk is then its core plus about chunk_overlap
tokens from the end of the previous core (starting at a line or word boundary). The
splitter's own overlap is not used because it silently vanishes next to a long line.
Every piece the splitter returns is an exact substring of the document (separators are
kept, edge whitespace stripped), so each chunk's character span (start, end) in the
original text is found by searching forward from the previous core's end.

A token count of a chunk on its own can differ by a token or two from its count inside the
prompt (the tokenizer merges across the boundary), so `Chunker.prompt_cost` measures the real
thing: the prompt core.prompt.build_prompt_ids would build, untruncated. A chunk that does
not fit is split again, smaller; nothing is ever cut off by truncation.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

from langchain_text_splitters import RecursiveCharacterTextSplitter

from core.config import Config, check_chunk_overlap
from core.prompt import build_prompt_ids, check_template_fits, template_token_count

# paragraphs, lines, sentences, clauses, words, characters
SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]
_NO_LIMIT = 10**9
# Slack when a piece is split again because it costs more inside the prompt than on its own.
# Its overshoot is measured on the whole piece, but the smaller pieces' edges tokenize afresh
# (a token or two each, see above); without slack a re-split can land a token over again and
# crawl down one token per round. 8 tokens covers a few edges: a margin, not a measured bound.
RESPLIT_SLACK = 8
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # character span in the original text: text[start:end] == self.text
    end: int
    text: str
    tokens: int  # tokens this chunk adds to the prompt

    def span_dict(self) -> dict:
        """Everything but the text: what the JSON tree records."""
        d = asdict(self)
        d.pop("text")
        return d


def reduce_template(cfg: Config) -> str:
    """The prompt for summarizing summaries; by default the training template itself."""
    return cfg.mapreduce.reduce_template or cfg.data.prompt_template


def check_chunk_budget(tokenizer, cfg: Config) -> None:
    """ConfigError unless a full chunk plus either template fits the prompt budget."""
    size = cfg.mapreduce.chunk_size
    for name, template in (("prompt_template", cfg.data.prompt_template), ("reduce_template", reduce_template(cfg))):
        check_template_fits(tokenizer, template, cfg.prompt_budget, f"{name}: chunk_size ({size})", room=size)


PARAGRAPH_BREAK = "\n\n"  # a core after one starts a chunk of its own, without overlap


class Chunker:
    """Token-sized, overlapping, span-tracking chunks that fit the prompt of every template given."""

    def __init__(
        self,
        tokenizer,
        chunk_size: int,
        chunk_overlap: int,
        templates: Sequence[str],
    ):
        check_chunk_overlap(chunk_size, chunk_overlap)
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.templates = list(dict.fromkeys(templates))
        self._template_cost = {t: template_token_count(tokenizer, t) for t in self.templates}

    @classmethod
    def from_config(cls, tokenizer, cfg: Config) -> "Chunker":
        check_chunk_budget(tokenizer, cfg)
        mr = cfg.mapreduce
        return cls(tokenizer, mr.chunk_size, mr.chunk_overlap, [cfg.data.prompt_template, reduce_template(cfg)])

    # --- measuring ---------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of the text on its own (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def prompt_cost(self, text: str, template: str | None = None) -> int:
        """Tokens `text` adds to the prompt of `template` (default: the costliest template)."""
        templates = [template] if template is not None else self.templates
        costs = []
        for t in templates:
            cost = self._template_cost.get(t)
            if cost is None:
                cost = self._template_cost[t] = template_token_count(self.tokenizer, t)
            full = build_prompt_ids(self.tokenizer, text, _NO_LIMIT, t)
            costs.append(max(0, len(full) - cost))
        return max(costs)

    def whole(self, text: str, template: str, budget: int) -> Chunk | None:
        """The whole text as one chunk if its prompt fits `budget` untruncated, else None.

        A document that fits is summarized in one pass: splitting it would only lose context.
        """
        if self.count_tokens(text) > budget:  # cheap early exit for long documents
            return None
        prompt = build_prompt_ids(self.tokenizer, text, _NO_LIMIT, template)
        if len(prompt) > budget:
            return None
        start = len(text) - len(text.lstrip())
        end = len(text.rstrip())
        return Chunk(0, start, end, text[start:end], self.prompt_cost(text, template))

    # --- splitting ---------------------------------------------------------------------

    def _splitter(self, size: int) -> RecursiveCharacterTextSplitter:
        return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            self.tokenizer,
            chunk_size=size,
            chunk_overlap=0,  # overlap is added afterwards, see split()
            separators=SEPARATORS,
            keep_separator="end",  # "sentence. " stays whole; the next chunk does not open with ". "
            strip_whitespace=True,
        )

    def _cores(self, text: str, offset: int, size: int) -> list[tuple[int, int]]:
        """Disjoint (start, end) spans of the splitter's pieces, each costing <= size in the prompt."""
        spans: list[tuple[int, int]] = []
        position = 0
        for piece in self._splitter(size).split_text(text):
            # pieces are disjoint, in order, separated only by stripped whitespace
            start = text.find(piece, position)
            if start < 0:
                raise RuntimeError(f"chunk not found in the document after position {position}")
            position = start + len(piece)
            if self.prompt_cost(piece) <= size:
                spans.append((offset + start, offset + position))
                continue
            # longer inside the prompt than on its own: split this piece again, smaller
            smaller = size - (self.prompt_cost(piece) - size) - RESPLIT_SLACK
            if smaller < 1:
                raise ValueError(f"cannot split a piece of text to fit {size} tokens")
            spans.extend(self._cores(piece, offset + start, smaller))
        return spans

    def _overlap_start(self, text: str, previous: tuple[int, int]) -> int:
        """Where a chunk starts so it repeats about chunk_overlap tokens of the previous core.

        Snaps forward to a line start if there is one early in that tail, else to a word start.
        """
        ps, pe = previous
        offsets = self.tokenizer(
            text[ps:pe], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )["offset_mapping"]
        if len(offsets) <= self.chunk_overlap:
            return ps
        start = ps + offsets[-self.chunk_overlap][0]
        line = text.find("\n", start, start + (pe - start) // 2)
        if line >= 0:
            return line + 1
        return self._next_word(text, start, pe)

    @staticmethod
    def _next_word(text: str, position: int, limit: int) -> int:
        space = _WHITESPACE.search(text, position, limit)
        return space.end() if space else limit

    def split(self, text: str) -> list[Chunk]:
        """Chunks of text in order; each fits the prompt; consecutive chunks share ~chunk_overlap tokens.

        The splitter cuts disjoint cores of chunk_size - chunk_overlap tokens; each chunk is
        its core plus the tail of the previous core, so the overlap holds even where the
        splitter's own overlap would vanish (a long line, a piece split again). A core that
        opens a new paragraph gets no overlap: the text is already broken there, and a
        news-trained summarizer would take the previous paragraph's last lines for the lead
        (on joined articles, every article but the first opened with its predecessor's tail).
        """
        cores = self._cores(text, 0, self.chunk_size - self.chunk_overlap)
        chunks: list[Chunk] = []
        for i, (core_start, end) in enumerate(cores):
            start = core_start
            if i and self.chunk_overlap and PARAGRAPH_BREAK not in text[cores[i - 1][1] : core_start]:
                start = self._overlap_start(text, cores[i - 1])
                if start <= chunks[-1].start:  # a previous core shorter than the overlap: it would
                    start = core_start  # swallow the whole previous chunk, so chunks must move forward
            while True:
                start += len(text[start:end]) - len(text[start:end].lstrip())
                cost = self.prompt_cost(text[start:end])
                if cost <= self.chunk_size or start >= core_start:
                    break
                start = min(self._next_word(text, start, core_start), core_start)  # trim the overlap
            chunks.append(Chunk(i, start, end, text[start:end], cost))
        return chunks

    def split_text(self, text: str) -> list[str]:
        """Just the chunk texts (used to cut an over-long summary during reduce)."""
        return [c.text for c in self.split(text)]
