"""Generative sequential recommendation: leave-one-out tasks over user
sequences, encoder-decoders that generate item identifiers, full-catalog
evaluation (`genrec.recommendation.train`)."""
