"""LangChain's map-reduce summarization recipe (the "summarize text" how-to) as a LangGraph StateGraph.

    graph = build_recipe_graph(map_llm, reduce_llm, count_tokens)    # llms: prompt value -> text
    state = summarize_with_recipe(graph, chunk_texts)                 # state["final_summary"]

    START -> Send("generate_summary", {"content": chunk}) per chunk      map, in parallel
          -> collect_summaries                                           the summaries as Documents
          -> collapse_summaries while their tokens exceed token_max      consecutive groups that fit
             (1,000)                                                     token_max, each summarized again
          -> generate_final_summary -> END                               the reduce prompt once more

The recipe's prompts, token_max and recursion_limit. Two departures from the how-to's text:
`split_list_of_docs` and `acollapse_docs` live in the langchain package (not installed here) and
are re-stated below, and a group reaches the reduce prompt as its summaries joined by blank lines
(the how-to formats the list of Document objects, their reprs included). `collapse_rounds` is
added to the state for the report. `pipeline_llm` is the model: a transformers
pipeline("text-generation") in a RunnableLambda, fed the prompt as text as
langchain_huggingface.HuggingFacePipeline does, with the engine's caps and decoding.
bench.bench_langgraph times it against the engine. Needs the bench extra (requirements-bench.txt).
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Awaitable, Callable, Literal, Optional, TypedDict

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

try:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send
except ImportError as exc:  # an optional extra, not a runtime dependency
    raise ImportError(f"{exc}: the LangGraph recipe needs the bench extra: "
                      "pip install --no-deps -r requirements-bench.txt") from exc

from core.config import Config

TOKEN_MAX = 1000  # the recipe's token_max
RECURSION_LIMIT = 10  # the recipe's
MAP_PROMPT = "Write a concise summary of the following:\n\n{context}"
REDUCE_PROMPT = """
The following is a set of summaries:
{docs}
Take these and distill it into a final, consolidated summary
of the main themes.
"""

# --- the recipe ----------------------------------------------------------------------


class OverallState(TypedDict, total=False):
    contents: list[str]
    summaries: Annotated[list, operator.add]  # the map's outputs, in the order of the Sends
    collapsed_summaries: list[Document]
    collapse_rounds: int  # added for the report: collapse_summaries runs
    final_summary: str


class SummaryState(TypedDict):
    content: str


LengthFunction = Callable[[list[Document]], int]


def split_list_of_docs(docs: list[Document], length_function: LengthFunction, token_max: int) -> list[list[Document]]:
    """Consecutive groups of docs whose length fits token_max (langchain's split_list_of_docs)."""
    groups: list[list[Document]] = []
    group: list[Document] = []
    for doc in docs:
        group.append(doc)
        if length_function(group) > token_max:
            if len(group) == 1:
                raise ValueError("A single document was longer than the context length, we cannot handle this.")
            groups.append(group[:-1])
            group = group[-1:]
    groups.append(group)
    return groups


async def acollapse_docs(docs: list[Document], combine: Callable[[list[Document]], Awaitable[str]]) -> Document:
    """One Document: the group's combined text (langchain's acollapse_docs, metadata left out)."""
    return Document(page_content=await combine(docs))


def docs_text(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


def build_recipe_graph(map_llm: Runnable, reduce_llm: Runnable, count_tokens: Callable[[str], int],
                       token_max: int = TOKEN_MAX):
    """The compiled StateGraph; each llm takes a prompt value and returns text."""
    map_chain = ChatPromptTemplate.from_messages([("system", MAP_PROMPT)]) | map_llm | StrOutputParser()
    reduce_chain = ChatPromptTemplate([("human", REDUCE_PROMPT)]) | reduce_llm | StrOutputParser()

    def length_function(documents: list[Document]) -> int:
        return sum(count_tokens(doc.page_content) for doc in documents)

    async def generate_summary(state: SummaryState):
        return {"summaries": [await map_chain.ainvoke({"context": state["content"]})]}

    def map_summaries(state: OverallState):
        return [Send("generate_summary", {"content": content}) for content in state["contents"]]

    def collect_summaries(state: OverallState):
        return {"collapsed_summaries": [Document(page_content=summary) for summary in state["summaries"]]}

    async def _reduce(docs: list[Document]) -> str:
        return await reduce_chain.ainvoke({"docs": docs_text(docs)})

    async def collapse_summaries(state: OverallState):
        doc_lists = split_list_of_docs(state["collapsed_summaries"], length_function, token_max)
        results = [await acollapse_docs(doc_list, _reduce) for doc_list in doc_lists]
        return {"collapsed_summaries": results, "collapse_rounds": state.get("collapse_rounds", 0) + 1}

    def should_collapse(state: OverallState) -> Literal["collapse_summaries", "generate_final_summary"]:
        if length_function(state["collapsed_summaries"]) > token_max:
            return "collapse_summaries"
        return "generate_final_summary"

    async def generate_final_summary(state: OverallState):
        return {"final_summary": await _reduce(state["collapsed_summaries"])}

    graph = StateGraph(OverallState)
    graph.add_node("generate_summary", generate_summary)
    graph.add_node("collect_summaries", collect_summaries)
    graph.add_node("collapse_summaries", collapse_summaries)
    graph.add_node("generate_final_summary", generate_final_summary)
    graph.add_conditional_edges(START, map_summaries, ["generate_summary"])
    graph.add_edge("generate_summary", "collect_summaries")
    graph.add_conditional_edges("collect_summaries", should_collapse)
    graph.add_conditional_edges("collapse_summaries", should_collapse)
    graph.add_edge("generate_final_summary", END)
    return graph.compile()


def summarize_with_recipe(graph, contents: list[str], max_concurrency: Optional[int] = None) -> dict:
    """The graph's final state for one document's chunk texts (asyncio, as the how-to streams it)."""
    config = {"recursion_limit": RECURSION_LIMIT}
    if max_concurrency:
        config["max_concurrency"] = max_concurrency
    return asyncio.run(graph.ainvoke({"contents": contents}, config))


# --- the recipe's model --------------------------------------------------------------


def recipe_caps(cfg: Config) -> dict[str, int]:
    """New tokens per recipe call: the engine's caps (map_max_new_tokens for a map call)."""
    return {"map": cfg.map_token_cap or cfg.generation.max_new_tokens, "reduce": cfg.generation.max_new_tokens}


def repetition_processor(gen):
    """The engine's repetition control (generated tokens only) for one batch-1 pipeline call, else None."""
    from core.generation import GeneratedRepetitionProcessor

    if gen.repetition_penalty == 1.0 and gen.no_repeat_ngram_size <= 0:
        return None

    class FirstStepPrompt(GeneratedRepetitionProcessor):
        """The prompt's width is the input's at the first step (one row, no padding)."""

        def __call__(self, input_ids, scores):
            if self.prompt_length is None:
                self.prompt_length = input_ids.shape[1]
            return super().__call__(input_ids, scores)

    processor = FirstStepPrompt(0, gen.repetition_penalty, gen.no_repeat_ngram_size)
    processor.prompt_length = None
    return processor


def pipeline_llm(pipe, cfg: Config, kind: str, calls: list[dict], count_tokens: Callable[[str], int]) -> Runnable:
    """A RunnableLambda: prompt value -> text, one pipeline call; each call's tokens go to `calls`."""
    from transformers import LogitsProcessorList

    from core.generation import hf_generation_config, stop_token_ids, with_max_new_tokens

    model, tokenizer = pipe.model, pipe.tokenizer
    gen = with_max_new_tokens(cfg.generation, recipe_caps(cfg)[kind])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(prompt) -> str:
        text = prompt.to_string() if hasattr(prompt, "to_string") else str(prompt)
        processor = repetition_processor(gen)
        out = pipe(text, return_full_text=False, logits_processor=LogitsProcessorList([processor] if processor else []),
                   generation_config=hf_generation_config(model, gen, pad_id, stop_token_ids(model, tokenizer)))
        summary = out[0]["generated_text"]
        calls.append({"kind": kind, "prompt_tokens": count_tokens(text), "output_tokens": count_tokens(summary)})
        return summary

    return RunnableLambda(generate, name=f"pipeline_{kind}")
