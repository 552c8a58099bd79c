"""genrec: generative retrieval and generative recommendation on JAX/Flax.

The core (this package's modules and `genrec.ids`, `genrec.data`) knows no
application; the applications are `genrec.recommendation`,
`genrec.retrieval` and `genrec.ranking`. `python main.py --gin_file=...` (or
the `genrec` command) runs whichever one the gin files configure.
"""

__version__ = '0.1.0'
