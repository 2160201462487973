"""Map-reduce summarization of long documents on Ray actors.

    chunking.py  token-sized, overlapping chunks with character spans (fit the adapter's prompt)
    reduce.py    collapse partial summaries level by level, to a length target or one final summary (no Ray, no model)
    pool.py      Ray actors, each holding one merged model; restart + retry on failure
    document.py  one document's life: chunks, levels (map, collapse-k, final), timings, result (no Ray)
    engine.py    open_engine / MapReduceEngine: schedule many documents' level inputs on the pool (API in its docstring)
    api.py       the Python API: Summarizer (in this process, no Ray) and RaySummarizer (the engine)
    cli.py       `python -m mapreduce.cli summarize` / `summarizer summarize`
    batch.py     resumable Ray batch job over a corpus, built on the engine
"""
