"""Generative document retrieval: BEIR collections and BM25 (`corpus`), DSI
and SEAL behind one interface (`method`, `dsi`, `seal_method`; trained and
evaluated by `docgen`; SEAL's FM-index and scorer are in the core,
`genrec.fm_index` and `genrec.seal`, which the server uses too), and the
export of trained retrievers (`export`)."""
