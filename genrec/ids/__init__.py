"""Item and document identifier schemes behind one interface."""

from genrec.ids.atomic import AtomicIds
from genrec.ids.base import EOS_ID, IdScheme, ItemIds, NUM_RESERVED_TOKENS, PAD_ID
from genrec.ids.collaborative import CollaborativeIds
from genrec.ids.kmeans import (HierarchicalKMeansIds, ProductQuantizationIds, ResidualKMeansIds,
                               add_collision_level)
from genrec.ids.naive import NaiveDigitIds
from genrec.ids.precomputed import PrecomputedIds, SequentialIds
from genrec.ids.random_codes import RandomCodeIds
from genrec.ids.rqvae import RQVAEIds
