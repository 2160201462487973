"""Map-reduce summarization of long documents on Ray actors.

    chunking.py  token-sized, overlapping chunks with character spans (fit the adapter's prompt)
    reduce.py    collapse partial summaries level by level, then a final reduce (no Ray, no model)
    pool.py      Ray actors, each holding one merged model; restart + retry on failure
    engine.py    MapReduceEngine: stream documents through chunk -> map -> reduce (API in its docstring)
    cli.py       `python -m mapreduce.cli summarize` / `summarizer summarize`
    batch.py     resumable Ray batch job over a corpus, built on the engine
"""
