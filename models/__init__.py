"""The runtime model: the LLM catalog, trained router artifacts (save, verify, load) and the
request-time `Router` (score, rank, explain). Imports `features` only — never `training` or
`serving`, which build and serve artifacts through it."""
