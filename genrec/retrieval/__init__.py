"""Generative document retrieval: BEIR collections and BM25 (`corpus`), the
FM-index over a corpus (`fm_index`), DSI and SEAL (`docgen`)."""
