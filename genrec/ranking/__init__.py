"""Ranking with hashed Semantic-ID embeddings: item keys (`sid_features`) and
the DIN-style ranker with its cold-start evaluation (`ranker`)."""
